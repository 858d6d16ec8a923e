"""Deployment helpers: credentials for TLS and SuperNode authentication, and loopback process management.

* :mod:`resam_flower.deploy.credentials`: a local CA, the SuperLink certificate and SuperNode key pairs
  (``python -m resam_flower.deploy.credentials --out certs --nodes 4``).
* :mod:`resam_flower.deploy.processes`: start Flower processes in their own sessions and stop them with
  everything they spawned (used by the deployment tests).

See ``docs/DEPLOYMENT.md`` for the commands that run the default app on real devices (one
``flower-superlink``, several ``flower-supernode``, ``flwr run .`` against that SuperLink).
"""
