"""meshctl, the operator CLI of cellmesh.

``cli`` is the root click group (console script ``meshctl``); ``contexts`` keeps the
kubeconfig-like list of cells meshctl talks to; ``mesh_commands`` holds the commands that call a
cell's meshapi (``apply``, ``delete``, ``services``); ``certs_commands`` holds ``ca`` and
``certs``. Commands are thin: they check input, call a library, and print a short result.
"""
