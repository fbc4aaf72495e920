"""The PyTorch side, without Ray: data, models, loop, checkpoints."""

import pytest
import torch

from raytune_suite.errors import CheckpointError
from raytune_suite.training import checkpoint as ckpt
from raytune_suite.training.config import ClassifierConfig
from raytune_suite.training.data import load_dataset
from raytune_suite.training.loop import evaluate, make_optimizer, train_epoch
from raytune_suite.training.models import build_model


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_model_learns_digits(model):
    cfg = ClassifierConfig(dataset="digits", model=model, lr=3e-3, epochs=3)
    torch.manual_seed(0)
    data = load_dataset("digits", image=model == "cnn")
    net = build_model(cfg, data.input_shape, data.num_classes)
    opt = make_optimizer(cfg, net.parameters())
    gen = torch.Generator().manual_seed(0)
    before = evaluate(net, data.x_val, data.y_val)[1]
    for _ in range(3):
        train_epoch(net, opt, data.x_train, data.y_train, 64, gen)
    after = evaluate(net, data.x_val, data.y_val)[1]
    assert after > 0.85 > before


def test_cnn_is_the_practitioners_cnn():
    cfg = ClassifierConfig(model="cnn", width=1.0, dropout=0.5)
    net = build_model(cfg, (3, 32, 32), 10)
    convs = [m.out_channels for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    fcs = [m.out_features for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert convs == [64, 128] and fcs == [512, 10]
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_optimizer_choice():
    net = torch.nn.Linear(2, 2)
    sgd = make_optimizer(ClassifierConfig(optimizer={"name": "sgd", "momentum": 0.8,
                                                     "nesterov": True}, lr=0.1), net.parameters())
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.param_groups[0]["momentum"] == 0.8 and sgd.param_groups[0]["nesterov"]
    adamw = make_optimizer(ClassifierConfig(optimizer="adamw", weight_decay=0.01),
                           net.parameters())
    assert isinstance(adamw, torch.optim.AdamW)


def _state(model, opt, epoch=3):
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
            "config": {"lr": 0.1}, "rng": {"torch": torch.get_rng_state()}}


def test_checkpoint_round_trip(tmp_path):
    net = torch.nn.Linear(4, 3)
    opt = torch.optim.Adam(net.parameters())
    net(torch.ones(1, 4)).sum().backward()
    opt.step()
    ckpt.save(tmp_path, _state(net, opt))
    state = ckpt.load(tmp_path)
    other = torch.nn.Linear(4, 3)
    other_opt = torch.optim.Adam(other.parameters())
    ckpt.load_into(state, other, other_opt)
    assert torch.equal(other.weight, net.weight)
    assert other_opt.state_dict()["state"][0]["step"] == 1
    assert state["epoch"] == 3


def test_truncated_checkpoint_is_an_error_naming_it(tmp_path):
    net = torch.nn.Linear(4, 3)
    ckpt.save(tmp_path, _state(net, torch.optim.SGD(net.parameters(), lr=0.1)))
    blob = (tmp_path / ckpt.STATE_FILE).read_bytes()
    (tmp_path / ckpt.STATE_FILE).write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match=f"checkpoint {tmp_path}.*truncated or corrupt"):
        ckpt.load(tmp_path)


def test_wrong_shape_checkpoint_is_an_error_naming_it(tmp_path):
    net = torch.nn.Linear(4, 3)
    ckpt.save(tmp_path, _state(net, torch.optim.SGD(net.parameters(), lr=0.1)))
    state = ckpt.load(tmp_path)
    with pytest.raises(CheckpointError, match=f"checkpoint {tmp_path} does not fit this model"):
        ckpt.load_into(state, torch.nn.Linear(5, 3))


def test_missing_files_is_an_error(tmp_path):
    with pytest.raises(CheckpointError, match="missing"):
        ckpt.load(tmp_path)
