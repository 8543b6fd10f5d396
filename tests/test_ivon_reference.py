"""ivon.IVON against the reference ivon-opt 0.1.3: same seed and calls -> bit-identical means, momentum, Hessian."""
from __future__ import annotations

import pytest
import torch

import ivon
from _ivon_utils import assert_bit_equal, load_reference, make_params, snapshot, train

CONFIGS = {
    "defaults": dict(lr=0.1, ess=10.0),
    "mc2_clip_wd": dict(lr=0.05, ess=100.0, mc_samples=2, weight_decay=1e-2, clip_radius=0.01),
    "gradsq_plain": dict(lr=0.05, ess=50.0, hess_approx="gradsq", debias=False, rescale_lr=False, beta2=0.9),
    "gradsq_mc2": dict(
        lr=0.05, ess=50.0, hess_approx="gradsq", mc_samples=2, beta1=0.5, hess_init=0.3, clip_radius=0.2
    ),
    "price_nodebias_nowd": dict(lr=0.02, ess=30.0, debias=False, weight_decay=0.0, beta2=0.999, hess_init=2.0),
    "price_norescale_mc3": dict(lr=0.02, ess=5.0, rescale_lr=False, mc_samples=3, beta1=0.0, clip_radius=1.0),
}
# The second group overrides some hyperparameters, so per-group values must be used everywhere.
GROUP1 = dict(lr=0.01, ess=7.0, weight_decay=0.1, beta1=0.8, clip_radius=0.05)


def run(module, cfg, steps=20, *, scheduler=False, group1=GROUP1, shapes=((5, 7), (7,), (3, 4, 2)), after=None):
    params = make_params(0, shapes)
    opt = module.IVON([{"params": params[:2]}, {"params": params[2:], **group1}], **cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1 + t)) if scheduler else None
    torch.manual_seed(1234)
    callback = None if after is None else (lambda t: after(params, t))
    train(opt, params, steps, cfg.get("mc_samples", 1), sched, callback)
    return opt, params


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_bit_identical_to_reference(name):
    ref = load_reference()
    cfg = CONFIGS[name]
    ref_opt, ref_params = run(ref, cfg)
    opt, params = run(ivon, cfg)
    assert_bit_equal(snapshot(opt, params), snapshot(ref_opt, ref_params))
    assert opt.current_step == ref_opt.current_step == 20
    # the trajectory really moved (guards against a test that compares two no-ops)
    assert not torch.equal(params[0], make_params(0)[0])


def test_bit_identical_with_lr_scheduler():
    ref = load_reference()
    cfg = dict(lr=0.1, ess=10.0, mc_samples=2)
    ref_opt, ref_params = run(ref, cfg, steps=6, scheduler=True)
    opt, params = run(ivon, cfg, steps=6, scheduler=True)
    assert opt.param_groups[0]["lr"] == ref_opt.param_groups[0]["lr"] == pytest.approx(0.1 / 7)
    assert_bit_equal(snapshot(opt, params), snapshot(ref_opt, ref_params))


def test_bit_identical_on_groups_larger_than_a_chunk():
    """Groups longer than the internal slice size (and not a multiple of the vector width)."""
    ref = load_reference()
    cfg = dict(lr=0.1, ess=100.0, clip_radius=0.5, mc_samples=2)
    shapes = ((257, 300), (11,), (37,))
    ref_opt, ref_params = run(ref, cfg, steps=2, group1=dict(lr=0.3), shapes=shapes)
    opt, params = run(ivon, cfg, steps=2, group1=dict(lr=0.3), shapes=shapes)
    assert_bit_equal(snapshot(opt, params), snapshot(ref_opt, ref_params))


def test_bit_identical_when_params_are_edited_between_steps():
    """In-place edits (AdaLoRA masking) and replaced ``.data`` (a device move, even a new shape) are seen
    by the next step."""

    def edit(params, t):
        with torch.no_grad():
            params[0][0].zero_()
            params[1].data = params[1].data.clone().mul_(0.5)
            if t == 1:
                params[0].data = params[0].data.reshape(7, 5)

    ref = load_reference()
    ref_opt, ref_params = run(ref, CONFIGS["defaults"], steps=4, after=edit)
    opt, params = run(ivon, CONFIGS["defaults"], steps=4, after=edit)
    assert_bit_equal(snapshot(opt, params), snapshot(ref_opt, ref_params))


def test_evaluation_samples_match_reference():
    """sampled_params(train=False) draws the same sample and leaves the means untouched."""
    ref = load_reference()
    samples = []
    for module in (ref, ivon):
        params = make_params(3)
        opt = module.IVON([{"params": params[:1]}, {"params": params[1:], "ess": 3.0}], lr=0.1, ess=10.0)
        torch.manual_seed(7)
        train(opt, params, 2)
        before = [p.detach().clone() for p in params]
        with opt.sampled_params():
            drawn = [p.detach().clone() for p in params]
        assert_bit_equal([p.detach() for p in params], before)
        samples.append(drawn)
    assert_bit_equal(samples[0], samples[1])
    assert not torch.equal(samples[1][0], before[0])


def test_reference_state_dict_loads_and_continues_like_the_reference():
    """A state dict saved by ivon-opt (no current_step) loads; both optimizers then continue identically."""
    ref = load_reference()
    ref_opt, ref_params = run(ref, CONFIGS["mc2_clip_wd"], steps=3)
    state = ref_opt.state_dict()
    assert "current_step" not in state["state"]

    continued = []
    for module in (ref, ivon):
        params = [torch.nn.Parameter(p.detach().clone()) for p in ref_params]
        opt = module.IVON([{"params": params[:2]}, {"params": params[2:], **GROUP1}], **CONFIGS["mc2_clip_wd"])
        opt.load_state_dict(state)
        assert opt.current_step == 0  # ivon-opt semantics: the step count restarts
        torch.manual_seed(99)
        train(opt, params, 3, mc_samples=2)
        continued.append(snapshot(opt, params))
    assert_bit_equal(continued[1], continued[0])


def test_our_state_dict_loads_into_the_reference():
    ref = load_reference()
    opt, params = run(ivon, CONFIGS["defaults"], steps=2)
    ref_opt = ref.IVON([{"params": params[:2]}, {"params": params[2:], **GROUP1}], **CONFIGS["defaults"])
    ref_opt.load_state_dict(opt.state_dict())
    assert_bit_equal(snapshot(ref_opt, params), snapshot(opt, params))


def test_spec_fixed_vector():
    """Numbers recorded from ivon-opt 0.1.3: one parameter, loss Σp², two steps."""
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    opt = ivon.IVON([p], lr=0.1, ess=10, weight_decay=1e-4)
    torch.manual_seed(123)
    expected = [
        dict(noise=[-0.0352472, 0.0380602, -0.1168829], mean=[0.80703622, -1.60758221, 0.42337012],
             hess=[0.99998319, 0.99997503, 0.99998105], momentum=[0.19295056, -0.39238796, 0.07662343]),
        dict(mean=[0.63867545, -1.21268392, 0.33553764], hess=[0.99996209, 1.00011539, 0.99997753]),
    ]  # fmt: skip
    for want in expected:
        mean = p.detach().clone()
        with opt.sampled_params(train=True):
            noise = p.detach() - mean
            (p**2).sum().backward()
        opt.step()
        opt.zero_grad()
        if "noise" in want:
            torch.testing.assert_close(noise, torch.tensor(want["noise"]), rtol=0, atol=5e-8)
        torch.testing.assert_close(p.detach(), torch.tensor(want["mean"]), rtol=0, atol=5e-8)
        for key in ("hess", "momentum"):
            if key in want:
                torch.testing.assert_close(opt.param_groups[0][key], torch.tensor(want[key]), rtol=0, atol=5e-8)


def test_bit_identical_with_dropout_in_the_forward():
    """The sample's randn and the model's dropout share the CPU generator: their order must match too."""
    ref = load_reference()
    results = []
    for module in (ref, ivon):
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Linear(6, 16), torch.nn.Dropout(0.3), torch.nn.Tanh(), torch.nn.Linear(16, 3)
        )
        x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
        opt = module.IVON(
            [{"params": model[0].parameters()}, {"params": model[3].parameters(), "lr": 0.02}],
            lr=0.05, ess=100.0, mc_samples=2,
        )  # fmt: skip
        for _ in range(5):
            for _ in range(2):
                with opt.sampled_params(train=True):
                    torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.zero_grad()
            opt.step()
        results.append([p.detach().clone() for p in model.parameters()] + [torch.rand(3)])
    assert_bit_equal(results[1], results[0])  # the trailing rand: same RNG position afterwards
