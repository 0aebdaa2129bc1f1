"""Plain sync views that change Notes, as the host project's own code would."""

import json

from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from .models import Note


class Rollback(Exception):
    pass


@csrf_exempt
def create(request: HttpRequest) -> JsonResponse:
    body = json.loads(request.body)
    note = Note.objects.create(board=body["board"], title=body["title"],
                               status=body.get("status", "open"))
    return JsonResponse({"id": note.pk}, status=201)


@csrf_exempt
def update(request: HttpRequest, pk: int) -> JsonResponse:
    note = Note.objects.get(pk=pk)
    body = json.loads(request.body)
    note.title = body.get("title", note.title)
    note.status = body.get("status", note.status)
    note.save()
    return JsonResponse({"id": note.pk})


@csrf_exempt
def delete(request: HttpRequest, pk: int) -> JsonResponse:
    Note.objects.get(pk=pk).delete()
    return JsonResponse({"id": pk})


@csrf_exempt
def rolled_back(request: HttpRequest) -> JsonResponse:
    """Creates, updates and deletes inside a transaction that then rolls back."""
    body = json.loads(request.body)
    try:
        with transaction.atomic():
            note = Note.objects.create(board=body["board"], title=body["title"])
            note.title += " (edited)"
            note.save()
            Note.objects.filter(board=body["board"]).first().delete()
            raise Rollback
    except Rollback:
        pass
    return JsonResponse({"rolled_back": True, "count": Note.objects.filter(
        board=body["board"]).count()})


@csrf_exempt
def outbox(request: HttpRequest) -> JsonResponse:
    """Writes ``triggers`` with ``publish_on_commit`` (the transactional outbox): all in one
    transaction, or each in its own with ``"each": true``; ``"rollback": true`` rolls the one
    transaction back after writing them."""
    from broker.publish import publish_on_commit

    body = json.loads(request.body)

    def write(trigger: dict) -> str:
        return publish_on_commit(trigger["rooms"], trigger["data"],
                                 history=trigger.get("history", False))

    if body.get("each"):
        ids = []
        for trigger in body["triggers"]:
            with transaction.atomic():
                ids.append(write(trigger))
        return JsonResponse({"ids": ids})
    try:
        with transaction.atomic():
            ids = [write(trigger) for trigger in body["triggers"]]
            if body.get("rollback"):
                raise Rollback
    except Rollback:
        return JsonResponse({"rolled_back": True, "ids": ids})
    return JsonResponse({"ids": ids})
