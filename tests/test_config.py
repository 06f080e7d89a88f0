"""Config: defaults, YAML + overrides, and errors that name the key."""

import pytest

from fedmpi.config import ConfigError, load_config


def test_defaults_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("server:\n  num_rounds: 7\npeft:\n  lora:\n    rank: 8\n")
    cfg = load_config(path, ["server.num_rounds=9", "strategy.name=head_pruning", "peft.lora.target_modules=[query, value]"])
    assert cfg.server.num_rounds == 9 and cfg.peft.lora.rank == 8
    assert cfg.strategy.name == "head_pruning"
    assert cfg.peft.lora.target_modules == ("query", "value")
    assert "num_rounds: 9" in cfg.to_yaml()


@pytest.mark.parametrize(
    "override, message",
    [
        ("server.num_rounds=0", "server.num_rounds"),
        ("server.num_clients_per_round=101", "server.num_clients_per_round (101) must not exceed data.num_clients (100)"),
        ("data.dirichlet_alpha=0", "data.dirichlet_alpha"),
        ("data.dirichlet_alpha=-1", "data.dirichlet_alpha"),
        ("strategy.sparsity=1.0", "strategy.sparsity"),
        ("client.lr=0", "client.lr"),
        ("server.bogus=1", "server.bogus: unknown key"),
        ("bogus.key=1", "bogus: unknown key"),
        ("server.num_rounds=many", "server.num_rounds"),
        ("data.partition=skewed", "data.partition"),
        ("server.selection=greedy", "server.selection"),
        ("peft.lora.rank=0", "peft.lora.rank"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(None, [override])


def test_random_pruning_cannot_weight_by_importance():
    with pytest.raises(ConfigError, match="strategy.weighting"):
        load_config(None, ["strategy.name=head_pruning", "strategy.pruning=random"])


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(None, ["server.num_rounds"])


def test_data_source_choices_are_the_registered_sources():
    import typing

    from fedmpi.config import DataConfig
    from fedmpi.data import SOURCES

    assert set(typing.get_args(DataConfig.model_fields["source"].annotation)) == set(SOURCES)


def test_output_name_must_be_a_plain_file_name_and_clients_need_examples():
    from fedmpi.config import ConfigError, load_config

    for name in ("../x", "a/b", ".hidden", ".."):
        with pytest.raises(ConfigError, match="must be a plain file name"):
            load_config(None, [f"output.name={name}"])
    with pytest.raises(ConfigError, match=r"data.num_clients \(300\) exceeds the embedded task's training examples \(200\)"):
        load_config(None, ["data.num_clients=300", "data.max_train_samples=200"])
    assert load_config(None, ["data.num_clients=200", "data.max_train_samples=200"]).data.num_clients == 200
