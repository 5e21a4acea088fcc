"""mosmos.options spells every architecture, backbone and device name once: read statically (nothing imported but
mosmos.options), no other code file holds one of those names as a string literal. Tests and docs aside, and the
Slicer modules' self-tests (classes ending in ``Test``), which pick a small backbone on the CPU as a user would."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from mosmos import options
from mosmos.errors import MosmosError

ROOT = Path(__file__).resolve().parents[1]
# The code that offers or reads the options: the core, the Slicer modules and their libraries, the scripts.
CODE = ("mosmos", "MOSMOSSegment", "MOSMOSTrain", "Resources/Scripts")
NAMES = set(options.ARCHITECTURES) | set(options.BACKBONES) | {options.CPU, options.CUDA}


def literal_names(source: str) -> list[tuple[int, str]]:
    """(line, name) of each string constant that is exactly one of NAMES, outside ``*Test`` classes."""
    tree = ast.parse(source)
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name.endswith("Test"):
            skipped.update(id(n) for n in ast.walk(node))
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in NAMES and id(n) not in skipped]


def code_files():
    for folder in CODE:
        yield from sorted((ROOT / folder).rglob("*.py"))


def test_option_names_are_spelled_only_in_the_options_module():
    files = [p for p in code_files() if p != ROOT / "mosmos" / "options.py"]
    assert len(files) > 100, "the code was not found"
    found = [f"{p.relative_to(ROOT)}:{line}: {name!r}" for p in files
             for line, name in literal_names(p.read_text(encoding="utf-8"))]
    assert not found, "spell these with mosmos.options' names:\n" + "\n".join(found)


def test_the_checker_sees_literals_and_leaves_self_tests_alone():
    source = 'A = "unetr"\nclass ModuleTest:\n    d = "cpu"\ndef f(device="cuda"):\n    return "a cpu"\n'
    assert literal_names(source) == [(1, "unetr"), (4, "cuda")]


def test_options_are_checked_with_one_line_naming_the_option():
    assert options.normalize_device(" GPU ") == options.CUDA and options.normalize_device(None) == options.AUTO
    assert options.canonical_backbone(" vit-b-16") == options.VIT_B_16
    with pytest.raises(MosmosError, match="device 'tpu': expected one of auto, cpu, cuda"):
        options.normalize_device("tpu")
    with pytest.raises(MosmosError, match="--overlap: must be >= 0 and < 1, got 1.0"):
        options.check_number("overlap", 1.0)
    with pytest.raises(MosmosError, match="--compile: must be one of auto, on, off, got 'yes'"):
        options.check_choice("compile", "yes", options.COMPILE_MODES)


def test_the_options_module_needs_no_torch():
    imported = {a.name.split(".")[0] for n in ast.walk(ast.parse(Path(options.__file__).read_text()))
                if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(ast.parse(Path(options.__file__).read_text()))
                 if isinstance(n, ast.ImportFrom) and n.module and not n.level}
    assert imported <= {"__future__", "math", "os", "dataclasses"}  # the standard library only, imported


def test_the_training_commands_make_their_configs_field_by_field():
    """Every configuration field is an option of its command (from_args maps none by hand), with the same
    default; the two flags that turn a field off are inverted."""
    import argparse

    from mosmos.commands import finetune, pretrain
    from mosmos.train.config import FinetuneConfig, PretrainConfig

    for command, config, required in ((pretrain, PretrainConfig, ["--roco", "r", "--out", "o"]),
                                      (finetune, FinetuneConfig, ["--data", "d", "--out", "o"])):
        parser = argparse.ArgumentParser()
        command.add_arguments(parser)
        made = config.from_args(parser.parse_args(required))
        assert made == config(required[1], required[3]), config.__name__
    parser = argparse.ArgumentParser()
    finetune.add_arguments(parser)
    made = FinetuneConfig.from_args(parser.parse_args(["--data", "d", "--out", "o", "--no-augment", "--paper-decoder",
                                                       "--arch", options.UNET2D, "--roi-size", "64", "64"]))
    assert (made.augment, made.maps_at_output, made.arch, made.roi_size) == (False, False, options.UNET2D, [64, 64])


def test_a_training_config_is_made_again_from_its_argv():
    """to_argv is from_args' inverse: from_args(parse(to_argv(c))) == c, for the defaults and for every field
    set away from its default (lists, None, the flags that turn a field on or off)."""
    import argparse

    from mosmos.commands import finetune, pretrain
    from mosmos.train.config import FinetuneConfig, PretrainConfig

    made = [
        (pretrain, PretrainConfig("r", "o")),
        (pretrain, PretrainConfig("r d", "o", backbone=options.RN50, weights="openai", epochs=3, batch_size=2,
                                  lr=2.5e-4, weight_decay=0.2, warmup_steps=7, seed=5, workers=0,
                                  precision=options.FP32, device=options.CPU, checkpoint_every=9, log_every=2,
                                  val_fraction=0.125, max_steps=11, description="two words", ablate="irc")),
        (finetune, FinetuneConfig("d", "o")),
        (finetune, FinetuneConfig("d", "o", arch=options.UNET2D, backbone=options.RN50, init="clip", pretrained="p",
                                  epochs=2, batch_size=3, num_samples=1, lr=3e-4, weight_decay=0.0, warmup_steps=0,
                                  lambda_pta=0.0, label_ratio=0.5, roi_size=[64, 32], spacing=[1.0, 1.0, 2.5],
                                  feature_size=8, augment=False, scale_augment=0.1, maps_at_output=False,
                                  learn_prompt=True, val_every=1, seed=1, workers=1, precision=options.BF16,
                                  device=options.CUDA, checkpoint_every=1, log_every=1, max_steps=5,
                                  description="x")),
    ]
    for command, config in made:
        parser = argparse.ArgumentParser()
        command.add_arguments(parser)
        assert type(config).from_args(parser.parse_args(config.to_argv())) == config, config
    assert made[3][1].to_argv().count("--no-augment") == 1 and "--learn-prompt" in made[3][1].to_argv()
    assert not {"--learn-prompt", "--no-augment", "--paper-decoder"} & set(made[2][1].to_argv())
