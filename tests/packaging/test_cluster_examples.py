"""`kubectl apply -f examples/cluster/` applies every file in the folder (not its subfolders, such as
production/, which is applied on its own): each must hold Kubernetes objects only."""

from pathlib import Path

import yaml

CLUSTER_EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "cluster"


def test_every_file_in_the_cluster_examples_is_a_kubernetes_manifest() -> None:
    files = sorted(path for path in CLUSTER_EXAMPLES.glob("*") if path.is_file())
    assert files, f"{CLUSTER_EXAMPLES} is empty"
    for path in files:
        assert path.suffix in (".yaml", ".yml"), f"{path.name}: kubectl apply -f reads only .yaml, .yml and .json"
        for document in yaml.safe_load_all(path.read_text()):
            if document is None:
                continue
            assert {"apiVersion", "kind"} <= set(document), (
                f"{path.name}: a document without apiVersion and kind makes `kubectl apply -f examples/cluster/` "
                "fail (chart values belong next to the chart's other inputs, e.g. examples/dev-values.yaml)"
            )
