"""What the API and the pages do to jobs: submit one (submit.py, idempotency.py), erase or retry one
(actions.py), wait for one to change (events.py)."""
