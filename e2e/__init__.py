"""The multi-cluster connectivity suite, run by ``meshctl connectivity test --multi-cluster``.

Flow: the CLI (``meshctl.connectivity_commands``) builds a ``driver.MeshDriver`` and hands it to
``suite.run_suite`` -> per named test (``cases``, ``disruptive``) a ``checks.TestContext`` ->
``environment`` (services through each cell's admin API, at the address and TLS directory the
driver resolved; echo pods through the driver) -> ``probe`` (``e2e.client`` run inside a pod)
-> pass, or ``CheckFailed`` naming the likely cause -> cleanup -> ``report`` (a ``SuiteReport``,
its JSON and exit code). The suite never imports the CLI. Reading order: e2e/README.md.
"""
