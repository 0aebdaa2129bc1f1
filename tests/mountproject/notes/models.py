from django.db import models


class Note(models.Model):
    board = models.CharField(max_length=50)
    title = models.CharField(max_length=200)
    status = models.CharField(max_length=20, default="open")  # tagged by notes/events.py
