"""meshctl's Kubernetes side: cells that are Kubernetes clusters, addressed by kube context.

``client.KubeClient`` is the one module of meshctl that talks to a Kubernetes API server (the
official ``kubernetes`` client and its ``DynamicClient``); everything else here goes through it.
Install: ``render`` (deploy/ for one cell) → ``tlssecrets`` (the cell's certificates from the
mesh CA) → ``install`` (server-side apply, readiness, uninstall), wired into ``meshctl
install|uninstall`` by ``meshctl.install_commands``. ``access`` and ``options`` let the other
commands reach a cell's meshapi by kube context.
"""
