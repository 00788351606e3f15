"""Shared fixtures: the real SmolLM2 model quantized once per test session,
tiny random Llama/Qwen2 models for fast checks of both architectures, and the
one-layer model the CLI tests run."""
from __future__ import annotations

import pytest

from awqcore.importers import load_source
from awqcore.importers.synthetic import SyntheticSource, tiny_config
from awqcore.quantize.pipeline import quantize_model
from tiny_models import ONE_LAYER_SPEC

GROUP_SIZE = 64  # SmolLM2's d=576 is not a multiple of 128


@pytest.fixture(scope="session")
def smollm2_source():
    return load_source("smollm2-135m")


@pytest.fixture(scope="session")
def smollm2_awqbin(smollm2_source, tmp_path_factory):
    path = tmp_path_factory.mktemp("smollm2") / "smollm2-135m-rtn-g64.awqbin"
    quantize_model(smollm2_source, path, method="rtn", group_size=GROUP_SIZE, progress=False)
    return path


@pytest.fixture(scope="session")
def smollm2_int8_awqbin(smollm2_source, tmp_path_factory):
    """SmolLM2 as smollm2_awqbin, its (tied) embedding table stored as int8."""
    path = tmp_path_factory.mktemp("smollm2") / "smollm2-135m-rtn-g64-int8.awqbin"
    quantize_model(smollm2_source, path, method="rtn", group_size=GROUP_SIZE, progress=False,
                   embeddings="int8")
    return path


@pytest.fixture(scope="session", params=["llama", "qwen2"])
def tiny_awqbin(request, tmp_path_factory):
    """(architecture, path) of a tiny random model quantized at group size 32."""
    source = SyntheticSource(tiny_config(request.param), seed=7)
    path = tmp_path_factory.mktemp("tiny") / f"tiny-{request.param}.awqbin"
    quantize_model(source, path, method="rtn", group_size=32, progress=False)
    return request.param, path


@pytest.fixture(scope="session", params=["llama", "qwen2"])
def tiny_int8_awqbin(request, tmp_path_factory):
    """(architecture, path) as tiny_awqbin with int8 embedding/lm_head tables: the
    Llama config is untied (two int8 tables), the Qwen2 one tied (one)."""
    source = SyntheticSource(tiny_config(request.param), seed=7)
    path = tmp_path_factory.mktemp("tiny") / f"tiny-{request.param}-int8.awqbin"
    quantize_model(source, path, method="rtn", group_size=32, progress=False, embeddings="int8")
    return request.param, path


@pytest.fixture(scope="session")
def one_layer_awqbin(tmp_path_factory) -> str:
    """Path (str) of ONE_LAYER_SPEC, a one-layer tiny Llama, quantized with RTN at g32."""
    path = tmp_path_factory.mktemp("one_layer") / "tiny.awqbin"
    quantize_model(load_source(ONE_LAYER_SPEC), path, method="rtn", group_size=32, progress=False)
    return str(path)
