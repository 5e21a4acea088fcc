import json

import pytest
import torch

from mosmos.errors import MosmosError
from mosmos.modelfile import load_model, read_header, save_model


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(4, 3, generator=g), "b": torch.arange(5, dtype=torch.int64)}


def test_round_trip_keeps_tensors_and_header(tmp_path):
    path = tmp_path / "m.safetensors"
    save_model(path, _tensors(), {"kind": "pretrained", "tags": ["liver"]})
    tensors, header = load_model(path)
    for k, v in _tensors().items():
        assert torch.equal(tensors[k], v)
    assert header["kind"] == "pretrained" and header["tags"] == ["liver"]
    assert header["format_version"] == 1 and len(header["sha256"]) == 64
    assert read_header(path) == header
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_truncated_file_is_a_one_line_error(tmp_path):
    path = tmp_path / "m.safetensors"
    save_model(path, _tensors(), {"kind": "pretrained"})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 7])
    with pytest.raises(MosmosError, match="truncated or corrupt") as e:
        load_model(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_tampered_weights_fail_the_checksum(tmp_path):
    path = tmp_path / "m.safetensors"
    save_model(path, _tensors(), {"kind": "pretrained"})
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(MosmosError, match="checksum mismatch"):
        load_model(path)


@pytest.mark.parametrize("content", [b"", b"\x00" * 3, b"garbage that is not safetensors at all"])
def test_not_a_model_file(tmp_path, content):
    path = tmp_path / "x.safetensors"
    path.write_bytes(content)
    with pytest.raises(MosmosError, match="not a MOSMOS model file"):
        load_model(path)


def test_safetensors_without_mosmos_header(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(MosmosError, match="no 'mosmos' header"):
        read_header(path)


def test_newer_format_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "future.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"mosmos": json.dumps({"format_version": 99})})
    with pytest.raises(MosmosError, match="unsupported model file format version 99"):
        read_header(path)


def test_unwritable_destination(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(MosmosError, match="cannot write"):
        save_model(blocker / "m.safetensors", _tensors(), {})
