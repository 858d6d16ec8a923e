"""The default ClientApp (``[tool.flwr.app.components] clientapp``): the RESAM worker."""

from ..clients.worker import make_client_app

app = make_client_app()
