"""The chart's crds/ folder holds exactly the CRDs generated from the models, as the top-level crds/ does.

Regenerate both with `fleetflow crds --write crds && fleetflow crds --write charts/fleetflow/crds`."""

from pathlib import Path

import yaml

from fleetflow.api.crds import all_crds
from tests.packaging import chart

TOP_LEVEL = chart.REPO / "crds"
IN_CHART = chart.CHART / "crds"
REGENERATE = "run `fleetflow crds --write crds && fleetflow crds --write charts/fleetflow/crds`"


def files(folder: Path) -> dict[str, str]:
    return {path.name: path.read_text() for path in sorted(folder.glob("*.yaml"))}


def test_chart_crds_are_the_ones_generated_from_the_models() -> None:
    shipped = files(IN_CHART)
    generated = all_crds()
    assert sorted(shipped) == sorted(generated), f"chart crds/ holds {sorted(shipped)}; {REGENERATE}"
    for name, crd in generated.items():
        assert yaml.safe_load(shipped[name]) == crd, f"charts/fleetflow/crds/{name} is stale; {REGENERATE}"


def test_chart_crds_are_identical_to_the_top_level_crds() -> None:
    assert files(IN_CHART) == files(TOP_LEVEL), f"charts/fleetflow/crds/ and crds/ differ; {REGENERATE}"


def test_helm_installs_the_crds_from_the_chart() -> None:
    """Helm applies crds/ before the templates, never templated and never deleted on uninstall."""
    import helm_python as helm

    loaded = helm.Chart.load(chart.CHART).crds
    names = {yaml.safe_load(crd["data"])["metadata"]["name"] for crd in loaded}
    assert names == {crd["metadata"]["name"] for crd in all_crds().values()}
