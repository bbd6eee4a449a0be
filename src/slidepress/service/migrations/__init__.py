"""Alembic migrations of the job database (`versions/`, one file per schema change, applied at
start-up by `db.migrate`). To change the schema: edit the models in `db.py`, add a revision
here (`down_revision` = the previous head) and test it from an empty database and from the
previous schema (tests/test_service.py)."""
