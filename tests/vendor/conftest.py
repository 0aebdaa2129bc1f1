# The vendored suites are not this project's pytest tests: each is run against the broker by
# a test of ours that provides what the suite imports (tests/integration/test_amqp_source.py
# runs High-templar's).
collect_ignore = ["high_templar"]
