"""The HTML pages: the form and a job's page (jobs.py), several photos in one post (albums.py), and
how progress reads on them (status_text.py)."""
