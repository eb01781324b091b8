"""What the tests share: servers and processes (servers.py), the fixtures (fixtures.py, registered as a
pytest plugin by tests/conftest.py), photos (photos.py), API keys (keys.py), HTTP helpers (http.py) and
the fault harness (faults.py). Test modules import from here, never from one another."""
