"""meshctl, the operator CLI of cellmesh.

``cli`` is the root click group (console script ``meshctl``: ``--config``, ``--context`` and
``context add|list|use|delete``); ``contexts`` keeps the kubeconfig-like list of cells meshctl
talks to. Commands, one module per topic: ``certs_commands`` (``ca``, ``certs``),
``mesh_commands`` (``apply``, ``delete``, ``services``), ``connect_commands`` (``connect``,
``disconnect``; the records they write come from ``peering``, pure), ``status_commands``
(``status [--wait]``), ``explain_commands`` (``explain service``, over ``meshcore.lbpolicy``),
``bpf_commands`` (``bpf services``), ``lab`` (``lab up|status|exec|stop|start|restart|down`` and
the ``LabDriver`` of the connectivity suite), ``connectivity_commands`` (``connectivity test``:
builds the driver and runs the ``e2e`` suite with it; ``e2e`` never imports meshctl).
``output`` is the shared ``-o table|json`` and table format. Commands are thin: they check
input, call a library, and print a short result.
"""
