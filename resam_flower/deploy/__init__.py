"""Deployment helpers: credentials for TLS and SuperNode authentication, and loopback process management.

* :mod:`resam_flower.deploy.credentials`: a local CA, the SuperLink certificate, SuperNode key pairs and the
  SuperExec secret (``python -m resam_flower.deploy.credentials --out certs --nodes 4``).
* :mod:`resam_flower.deploy.proxy`: the nginx reverse proxy that gives the devices the Fleet API only.
* :mod:`resam_flower.deploy.server`: the hardened server side in one command (SuperLink on 127.0.0.1,
  SuperExec, proxy).
* :mod:`resam_flower.deploy.loopback`: all of it plus SuperNodes and ``flwr run .`` on one machine.
* :mod:`resam_flower.deploy.processes`: start Flower processes in their own sessions and stop them with
  everything they spawned (used by the deployment tests).

See ``docs/DEPLOYMENT.md`` for the commands that run the default app on real devices (one
``flower-superlink`` behind the proxy, several ``flower-supernode``, ``flwr run .`` from the operator).
"""
