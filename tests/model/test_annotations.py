"""Service annotations -> flags: new and legacy keys, disagreement, unknown values, defaults."""

from __future__ import annotations

import pytest

from meshcore.model import Affinity, ServiceFlags, parse_service_annotations

G, S, A = "service.cilium.io/global", "service.cilium.io/shared", "service.cilium.io/affinity"
LG, LS, LA = "io.cilium/global-service", "io.cilium/shared-service", "io.cilium/service-affinity"
LOCAL, REMOTE, NONE = Affinity.LOCAL, Affinity.REMOTE, Affinity.NONE


@pytest.mark.parametrize(
    ("annotations", "global_", "shared", "affinity", "warnings"),
    [
        pytest.param({}, False, False, NONE, [], id="none"),
        pytest.param({"app": "x"}, False, False, NONE, [], id="unrelated"),
        pytest.param({G: "true"}, True, True, NONE, [], id="global-shared-by-default"),
        pytest.param({G: "false"}, False, False, NONE, [], id="global-false"),
        pytest.param({G: "true", S: "false"}, True, False, NONE, [], id="not-shared"),
        pytest.param({G: "true", S: "true"}, True, True, NONE, [], id="shared-explicit"),
        pytest.param({G: "true", A: "local"}, True, True, LOCAL, [], id="affinity-local"),
        pytest.param({G: "true", A: "remote"}, True, True, REMOTE, [], id="affinity-remote"),
        pytest.param({G: "true", A: "none"}, True, True, NONE, [], id="affinity-none"),
        pytest.param({G: " TRUE\n", A: " Local "}, True, True, LOCAL, [], id="case-whitespace"),
        pytest.param({G: "True", S: "FALSE"}, True, False, NONE, [], id="case-bools"),
        pytest.param({LG: "true"}, True, True, NONE, [], id="legacy-global"),
        pytest.param(
            {LG: "true", LS: "false", LA: "remote"}, True, False, REMOTE, [], id="legacy-all"
        ),
        pytest.param({G: "true", LG: "TRUE"}, True, True, NONE, [], id="both-agree"),
        pytest.param(
            {G: "true", LG: "false"},
            True,
            True,
            NONE,
            [f"{G}='true' and legacy {LG}='false' disagree; using {G}"],
            id="both-disagree-new-wins",
        ),
        pytest.param(
            {G: "false", LG: "true"},
            False,
            False,
            NONE,
            [f"{G}='false' and legacy {LG}='true' disagree; using {G}"],
            id="both-disagree-new-wins-false",
        ),
        pytest.param(
            {G: "true", A: "local", LA: "remote"},
            True,
            True,
            LOCAL,
            [f"{A}='local' and legacy {LA}='remote' disagree; using {A}"],
            id="affinity-disagree",
        ),
        pytest.param(
            {G: "yes"},
            False,
            False,
            NONE,
            [f"{G}: unknown value 'yes' (expected 'true' or 'false'); using the default 'false'"],
            id="unknown-global",
        ),
        pytest.param(
            {G: "true", S: "maybe"},
            True,
            True,
            NONE,
            [f"{S}: unknown value 'maybe' (expected 'true' or 'false'); using the default 'true'"],
            id="unknown-shared-keeps-service",
        ),
        pytest.param(
            {G: "true", A: "closest"},
            True,
            True,
            NONE,
            [
                f"{A}: unknown value 'closest' (expected 'local', 'remote' or 'none'); "
                "using the default 'none'"
            ],
            id="unknown-affinity",
        ),
        pytest.param(
            {G: "true", LA: ""},
            True,
            True,
            NONE,
            [
                f"{LA}: unknown value '' (expected 'local', 'remote' or 'none'); "
                "using the default 'none'"
            ],
            id="empty-legacy-affinity",
        ),
        pytest.param(
            {G: "true", S: "nope", A: "far"},
            True,
            True,
            NONE,
            [
                f"{S}: unknown value 'nope' (expected 'true' or 'false'); using the default 'true'",
                f"{A}: unknown value 'far' (expected 'local', 'remote' or 'none'); "
                "using the default 'none'",
            ],
            id="several-unknown",
        ),
        pytest.param({S: "true"}, False, False, NONE, [], id="shared-without-global"),
        pytest.param(
            {A: "local"},
            False,
            False,
            NONE,
            [f"{A}='local' has no effect: the service is not global"],
            id="affinity-without-global",
        ),
    ],
)
def test_parse_service_annotations(
    annotations: dict[str, str],
    global_: bool,
    shared: bool,
    affinity: Affinity,
    warnings: list[str],
) -> None:
    flags = parse_service_annotations(annotations)
    assert flags == ServiceFlags(
        global_=global_, shared=shared, affinity=affinity, warnings=tuple(warnings)
    )
    assert flags.exported is (global_ and shared)
