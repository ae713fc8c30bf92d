"""Shared test set-up."""

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    # On a shared 2-core machine, two OpenMP threads that lose a core to another process spin and make
    # tiny ops ~50x slower; one thread keeps the in-process tests fast and their timings stable.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def pets_dataset(tmp_path_factory):
    """`pets_dataset(per_class)`: a prepared synthetic pets dataset (6 learnable breeds, varied aspect
    ratios), built once per size for the whole session. Tests read it; none writes into it."""
    from petqlora.data.prepare_data import PrepareDataConfig, prepare_data
    from petqlora.data.synthetic import generate_synthetic_pets

    built = {}

    def build(per_class: int = 4):
        if per_class not in built:
            root = tmp_path_factory.mktemp(f"pets{per_class}")
            source = generate_synthetic_pets(root / "source", per_class=per_class, seed=0)
            built[per_class] = prepare_data(PrepareDataConfig(source=str(source)), root / "dataset").path
        return built[per_class]

    return build
