"""
The sending daemon's control plane: a JSON API over HTTP under ``/v1/``
(:mod:`.api`, described by :mod:`.openapi`) and Prometheus metrics at
``/metrics`` (:mod:`.metrics`), served by ``twist txsmtp --control-port``.
:mod:`.server` checks the port and builds the site.

Imported only when the control plane is on, so the submission path never
loads ``twisted.web`` or ``prometheus_client``.
"""
