import json

import pytest
import torch

from mosmos.errors import MosmosError
from mosmos.files.modelfile import load_model, read_header, save_model


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(4, 3, generator=g), "b": torch.arange(5, dtype=torch.int64)}


def write_v1_model(path, tensors, header):
    """A format-1 file as mosmos 0.1 wrote it: fp32 tensors, one SHA-256 over all of them."""
    from safetensors.torch import save_file

    from mosmos.files.modelfile import tensors_digest

    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    full = {"format_version": 1, **header, "sha256": tensors_digest(tensors)}
    save_file(tensors, str(path), metadata={"mosmos": json.dumps(full)})
    return path


def test_round_trip_keeps_tensors_and_header(tmp_path):
    path = tmp_path / "m.safetensors"
    save_model(path, _tensors(), {"kind": "pretrained", "tags": ["liver"]})
    tensors, header = load_model(path)
    for k, v in _tensors().items():
        assert tensors[k].dtype == v.dtype  # computed in fp32 again
        torch.testing.assert_close(tensors[k], v, rtol=1e-3, atol=0)  # fp16 keeps 11 significant bits
    assert not torch.equal(tensors["a.weight"], _tensors()["a.weight"])  # stored as fp16, not fp32
    assert header["kind"] == "pretrained" and header["tags"] == ["liver"]
    assert header["format_version"] == 2 and header["storage_dtype"] == "float16"
    assert set(header["digests"]) == {"a", "b"} and all(len(d) == 64 for d in header["digests"].values())
    assert read_header(path) == header
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_fp16_halves_the_file_and_keeps_what_fp16_cannot_hold(tmp_path):
    big = {"w": torch.randn(1000, 100), "huge": torch.tensor([1e6, -3.0])}
    save_model(tmp_path / "v2.safetensors", big, {"kind": "pretrained"})
    write_v1_model(tmp_path / "v1.safetensors", big, {"kind": "pretrained"})
    ratio = (tmp_path / "v2.safetensors").stat().st_size / (tmp_path / "v1.safetensors").stat().st_size
    assert 0.49 < ratio < 0.52
    assert torch.equal(load_model(tmp_path / "v2.safetensors")[0]["huge"], big["huge"])  # kept fp32: no inf


def test_format_1_files_still_load(tmp_path):
    path = write_v1_model(tmp_path / "old.safetensors", _tensors(), {"kind": "pretrained"})
    tensors, header = load_model(path)
    assert header["format_version"] == 1
    for k, v in _tensors().items():
        assert torch.equal(tensors[k], v)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(MosmosError, match="checksum mismatch"):
        load_model(path)


def test_groups_are_read_and_verified_one_at_a_time(tmp_path):
    from mosmos.files.modelfile import open_model

    path = tmp_path / "m.safetensors"
    tensors = {"network.w": torch.randn(64), "text.w": torch.randn(64)}
    save_model(path, tensors, {"kind": "pretrained"})
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # the last tensor in the file: "text.w" (safetensors orders by name)
    path.write_bytes(bytes(data))
    lazy, _ = open_model(path)
    torch.testing.assert_close(lazy["network.w"], tensors["network.w"], rtol=1e-3, atol=0)
    assert lazy.groups_read == ["network"]
    with pytest.raises(MosmosError, match="checksum mismatch in the 'text' weights"):
        lazy["text.w"]
    with pytest.raises(MosmosError, match="checksum mismatch"):
        load_model(path)


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


@pytest.mark.parametrize("version", [99, 0, "2"])
def test_other_format_versions_are_refused(tmp_path, version):
    from safetensors.torch import save_file

    path = tmp_path / "future.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"mosmos": json.dumps({"format_version": version})})
    with pytest.raises(MosmosError, match=f"unsupported model file format version {version!r}"):
        read_header(path)


def test_unwritable_destination(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(MosmosError, match="cannot write"):
        save_model(blocker / "m.safetensors", _tensors(), {})


def test_verify_model_reads_each_version_of_a_file_once(tmp_path):
    """The web server checks the model before every run: an unchanged file (same path, size and mtime) is not
    read again, a changed one is."""
    import os

    from mosmos.files.modelfile import verify_model

    path = tmp_path / "m.mosmos"
    save_model(path, _tensors(), {"kind": "pretrained"})
    verify_model(path)
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    verify_model(path)                      # the same size and mtime: the remembered verdict
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    with pytest.raises(MosmosError, match="checksum mismatch"):
        verify_model(path)
