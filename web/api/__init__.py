"""The JSON API under /api/v1 and the health checks: one module per resource, the contract their
views declare (contract.py), and the OpenAPI document and page generated from it (docs.py)."""
