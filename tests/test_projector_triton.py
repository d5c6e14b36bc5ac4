"""The Triton footprint kernels against the reference kernels and the dense oracle.

The kernels run on CPU tensors under Triton's interpreter, which must be switched on
(``TRITON_INTERPRET=1``) before triton is first imported: the comparison runs in a fresh Python
process (this file run as a script), and the tests check what it reports. The cases are tiny
because the interpreter is slow. Skipped only where triton does not import. Where CUDA is present
the compiled kernels are compared on the GPU as well, on the same case and on a crowded one
(many atoms adding into the same pixels at once).
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from atomsplat.geometry import view_rotations
from atomsplat.render.backend import footprint_kernels, projector_backend
from atomsplat.render.projector import project_isotropic, project_isotropic_dense

NAMES = ["image", "means", "sigmas", "weights", "offsets"]


def case(dtype, seed):
    """Three views with a rotated tilt axis and offsets; atoms inside, across the edge, near a
    corner, one far below a pixel and one wide enough that its window (45 pixels) is walked in
    several blocks. Returns the projector's arguments and an upstream gradient (V, H, W)."""
    gen = torch.Generator().manual_seed(seed)
    pixel, height, width = 0.5, 18, 22
    means = (torch.rand(7, 3, generator=gen, dtype=torch.float64) * 2 - 1) * 3.0
    means[0] = torch.tensor([5.6, 0.3, -0.4])  # centre beyond the right edge in most views
    means[1] = torch.tensor([-5.0, -4.3, 0.8])  # near a corner
    sigmas = 0.3 + 0.6 * torch.rand(7, generator=gen, dtype=torch.float64)
    sigmas[2] = 2.6  # 4 sigma = 20.8 pixels: a 45-pixel window
    sigmas[3] = 0.05  # far below a pixel
    weights = 0.5 + torch.rand(7, generator=gen, dtype=torch.float64)
    rotations = torch.from_numpy(view_rotations([-50.0, 5.0, 62.0], 17.0))
    offsets = (torch.rand(3, 2, generator=gen, dtype=torch.float64) * 2 - 1) * 0.8
    upstream = torch.randn(3, height, width, generator=gen, dtype=torch.float64)
    tensors = [t.to(dtype) for t in (means, sigmas, weights, rotations, offsets)]
    return (*tensors, pixel, height, width), upstream.to(dtype)


def crowded_case(dtype, seed):
    """Four hundred atoms in a 3 A cube seen in twelve views of 24 x 24 pixels: every pixel near
    the centre is added to by hundreds of windows at once (the atomic adds' contention)."""
    gen = torch.Generator().manual_seed(seed)
    count, views, side = 400, 12, 24
    means = (torch.rand(count, 3, generator=gen, dtype=torch.float64) * 2 - 1) * 1.5
    sigmas = 0.3 + 0.5 * torch.rand(count, generator=gen, dtype=torch.float64)
    weights = 0.5 + torch.rand(count, generator=gen, dtype=torch.float64)
    rotations = torch.from_numpy(view_rotations(torch.linspace(-70, 70, views).tolist(), -8.0))
    offsets = torch.zeros(views, 2, dtype=torch.float64)
    upstream = torch.randn(views, side, side, generator=gen, dtype=torch.float64)
    tensors = [t.to(dtype) for t in (means, sigmas, weights, rotations, offsets)]
    return (*tensors, 0.4, side, side), upstream.to(dtype)


def image_and_gradients(backend, args, upstream):
    """Image and gradients (means, sigmas, weights, offsets) of ``sum(image * upstream)``."""
    means, sigmas, weights, rotations, offsets, pixel, height, width = args
    leaves = [t.clone().requires_grad_(True) for t in (means, sigmas, weights, offsets)]
    if backend == "dense":
        image = project_isotropic_dense(leaves[0], leaves[1], leaves[2], rotations, leaves[3], pixel, height, width)
    else:
        kernels = footprint_kernels(means.device, backend)
        image = project_isotropic(
            leaves[0], leaves[1], leaves[2], rotations, leaves[3], pixel, height, width, kernels=kernels
        )
    (image * upstream).sum().backward()
    return [image.detach()] + [leaf.grad for leaf in leaves]


def compare(dtype, seed, make=case, device="cpu") -> dict:
    """Largest differences of the Triton path from the reference and the oracle, relative to the
    largest value, per output; also whether every output was finite and kept its dtype. The case
    ``make(dtype, seed)`` is moved to ``device``."""
    args, upstream = make(dtype, seed)
    args = tuple(a.to(device) if torch.is_tensor(a) else a for a in args)
    upstream = upstream.to(device)
    ours = image_and_gradients("triton", args, upstream)
    reference = image_and_gradients("reference", args, upstream)
    dense = image_and_gradients("dense", args, upstream)

    def relative(a, b):
        return float((a - b).abs().max() / b.abs().max())

    return {
        "reference": {n: relative(a, b) for n, a, b in zip(NAMES, ours, reference)},
        "dense": {n: relative(a, b) for n, a, b in zip(NAMES, ours, dense)},
        "finite": all(bool(torch.isfinite(a).all()) for a in ours),
        "dtype": all(a.dtype == dtype for a in ours),
    }


@pytest.fixture(scope="module")
def report():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_kernels_ran_interpreted(report):
    assert report["interpreted"]


def test_triton_matches_reference_and_oracle_float64(report):
    result = report["float64"]
    assert result["finite"] and result["dtype"]
    for name in NAMES:
        assert result["reference"][name] < 1e-12, name  # same windows, same sums
        assert result["dense"][name] < 1e-4, name  # window truncation only


def test_triton_matches_reference_float32(report):
    result = report["float32"]
    assert result["finite"] and result["dtype"]
    for name in NAMES:
        assert result["reference"][name] < 1e-5, name
        assert result["dense"][name] < 1e-4, name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("make", [case, crowded_case], ids=["edges", "crowded"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_compiled_triton_on_cuda_matches_reference_and_oracle(make, dtype):
    pytest.importorskip("triton")
    result = compare(dtype, seed=2, make=make, device="cuda")
    assert result["finite"] and result["dtype"]
    bound = 1e-12 if dtype == torch.float64 else 1e-5  # the atomic adds' order is the only difference
    for name in NAMES:
        assert result["reference"][name] < bound, (name, result)
        assert result["dense"][name] < 1e-4, (name, result)


def test_triton_is_chosen_on_cuda_only(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.delenv("ATOMSPLAT_PROJECTOR", raising=False)
    assert projector_backend("cuda") == "triton"
    assert projector_backend("cpu") != "triton"
    monkeypatch.setenv("ATOMSPLAT_PROJECTOR", "reference")
    assert projector_backend("cuda") == "reference"


def test_kernels_compile_for_hopper():
    # ptxas ships with triton: the kernels compile for sm_90 without a GPU
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from atomsplat.render.kernels import triton as triton_kernels

    if not isinstance(triton_kernels._add_kernel, triton.runtime.JITFunction):
        pytest.skip("triton was imported with TRITON_INTERPRET set")
    pointers = {"image": "*fp32", "rows": "*fp32", "cols": "*fp32", "start_y": "*i64", "start_x": "*i64"}
    sizes = {"count": "i32", "size": "i32", "height": "i32", "width": "i32", "BLOCK": "constexpr"}
    kernels = [
        (triton_kernels._add_kernel, {**pointers, **sizes}),
        (triton_kernels._contract_kernel, {**pointers, "along_rows": "*fp32", "along_cols": "*fp32", **sizes}),
    ]
    for kernel, signature in kernels:
        source = ASTSource(fn=kernel, signature=signature, constexprs={"BLOCK": 32})
        assert "cubin" in triton.compile(source, target=GPUTarget("cuda", 90, 32)).asm


if __name__ == "__main__":  # the interpreted run (TRITON_INTERPRET=1 set by the caller)
    from triton.runtime.interpreter import InterpretedFunction

    from atomsplat.render.kernels import triton as triton_kernels

    print(
        json.dumps(
            {
                "interpreted": isinstance(triton_kernels._add_kernel, InterpretedFunction),
                "float64": compare(torch.float64, seed=0),
                "float32": compare(torch.float32, seed=1),
            }
        )
    )
