"""Entry point of ``python -m meshctl.lab.kubeapi`` (see `meshctl.lab.kubeapi.cli`)."""

from meshctl.lab.kubeapi.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
