"""The default ClientApp (``[tool.flwr.app.components] clientapp``): the RESAM worker."""

from .worker import make_client_app

app = make_client_app()
