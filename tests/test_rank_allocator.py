"""Rank allocation (peft.rank_allocator) on tiny fake AdaLoRA models: schedule, masking, timing, state, errors."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from peft import AdaLoraConfig, VILoraConfig
from peft.importance import POSTERIOR_SCORES
from peft.rank_allocator import RankAllocator, budget_at_step, mask_using_rank_pattern, validate_schedule

AD = "default"


# ------------------------------------------------------------------------------------------ fake models
class FakeSVDLinear(nn.Module):
    """Parameters named like peft.adalora.SVDLinear: lora_A [r,in], lora_B [out,r], lora_E [r,1], ranknum [1]."""

    def __init__(self, in_features: int, out_features: int, r: int, adapter: str = AD) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features), requires_grad=False)
        self.lora_A = nn.ParameterDict({adapter: nn.Parameter(torch.randn(r, in_features))})
        self.lora_B = nn.ParameterDict({adapter: nn.Parameter(torch.randn(out_features, r))})
        self.lora_E = nn.ParameterDict({adapter: nn.Parameter(torch.randn(r, 1))})
        self.ranknum = nn.ParameterDict({adapter: nn.Parameter(torch.tensor([float(r)]), requires_grad=False)})
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b, e = self.lora_A[self.adapter], self.lora_B[self.adapter], self.lora_E[self.adapter]
        return x @ self.weight.T + x @ (a * e).T @ b.T


class FakeBlock(nn.Module):
    def __init__(self, r: int, adapter: str) -> None:
        super().__init__()
        self.query = FakeSVDLinear(6, 6, r, adapter)
        self.value = FakeSVDLinear(6, 4, r, adapter)
        self.dense = FakeSVDLinear(4, 6, r, adapter)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(self.value(self.query(x))))


class FakeModel(nn.Module):
    """Two blocks × three adapted modules of different shapes, plus a plain classifier."""

    def __init__(self, r: int = 4, adapter: str = AD, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.encoder = nn.ModuleList([FakeBlock(r, adapter) for _ in range(2)])
        self.classifier = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.encoder:
            x = block(x)
        return self.classifier(x)

    def lora_names(self, kind: str = "lora_E", adapter: str = AD) -> list[str]:
        return [n for n, _ in self.named_parameters() if n.endswith(f".{kind}.{adapter}")]


MODULES = [f"encoder.{i}.{m}" for i in range(2) for m in ("query", "value", "dense")]


def make_config(criterion: str = "sensitivity", **kw) -> AdaLoraConfig:
    """A real peft config with these tests' defaults (init_r 4 -> target_r 2 over 20 updates): AdaLoraConfig for
    the sensitivity score, VILoraConfig for a posterior criterion."""
    fields = dict(init_r=4, target_r=2, tinit=2, tfinal=3, deltaT=1, beta1=0.85, beta2=0.85, total_step=20) | kw
    if criterion == "sensitivity":
        return AdaLoraConfig(**fields)
    return VILoraConfig(criterion=criterion, **fields)


def with_fields(config: AdaLoraConfig, **fields) -> AdaLoraConfig:
    """`config` with fields changed after construction, as a user changing a built config would: values the config
    itself refuses, for the allocator's own checks."""
    for name, value in fields.items():
        setattr(config, name, value)
    return config


class FakeIVON(torch.optim.Optimizer):
    """IVON-like: SGD on the means plus a per-parameter σ, looked up by parameter identity.

    Params are registered in the order given (tests pass them shuffled and in several groups).
    """

    def __init__(self, param_groups, lr: float = 0.05) -> None:
        super().__init__(param_groups, dict(lr=lr))
        self.sigmas = {}
        for i, p in enumerate(p for g in self.param_groups for p in g["params"]):
            self.sigmas[p] = 0.05 + 0.01 * i + 0.02 * torch.rand(p.shape)  # differs per parameter and element
        self.sigma_calls = 0

    def posterior_sigma(self, param: torch.Tensor) -> torch.Tensor:
        self.sigma_calls += 1
        if param not in self.sigmas:
            raise KeyError(f"parameter of shape {tuple(param.shape)} is not optimised by this IVON")
        return self.sigmas[param]

    @torch.no_grad()
    def step(self, closure=None):
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-g["lr"])


class Wrapped:
    """Like accelerate's AcceleratedOptimizer: the real optimizer sits in ``.optimizer``."""

    def __init__(self, optimizer) -> None:
        self.optimizer = optimizer


def train_step(model: FakeModel, optimizer, step: int) -> None:
    """Forward/backward on a step-seeded batch, then optimizer.step() (grads kept for the allocator)."""
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(8, 6, generator=g)
    y = torch.randint(0, 2, (8,), generator=g)
    optimizer.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()


def kept_from_weights(model: FakeModel) -> int:
    return sum(int((p != 0).sum()) for n, p in model.named_parameters() if n.endswith(f".lora_E.{AD}"))


def lora_params(model: FakeModel) -> list[nn.Parameter]:
    return [p for n, p in model.named_parameters() if ".lora_" in n]


# --------------------------------------------------------------------------------------------- schedule
DEBERTA = dict(init_bgt=219, target_bgt=146, tinit=600, tfinal=1800, total_step=3900, deltaT=1)


def test_budget_schedule_worked_table():
    table = {600: 219, 601: 218, 700: 205, 1000: 174, 1500: 150, 2099: 146, 2100: 146}
    assert {s: budget_at_step(s, **DEBERTA)[0] for s in table} == table
    assert budget_at_step(0, **DEBERTA) == (219, False)
    assert budget_at_step(600, **DEBERTA) == (219, False)
    assert budget_at_step(601, **DEBERTA) == (218, True)
    assert budget_at_step(2100, **DEBERTA) == (146, True)  # the final budget is fixed here
    assert budget_at_step(3899, **DEBERTA) == (146, True)
    every10 = {**DEBERTA, "deltaT": 10}
    assert [budget_at_step(s, **every10)[1] for s in (601, 609, 610, 700, 2099, 2100, 2101)] == [
        False, False, True, True, False, True, True
    ]


def test_budget_schedule_tfinal_zero_fixes_the_final_budget_at_the_last_step():
    """README, fixed defect 9: with tfinal = 0 the cubic never reached target_bgt within steps 0..T−1."""
    kw = dict(init_bgt=24, target_bgt=12, tinit=10, tfinal=0, total_step=40, deltaT=5)
    assert budget_at_step(38, **kw) == (12, False)  # int(12·(1/30)³·… + 12) = 12, not a deltaT step
    assert budget_at_step(35, **kw) == (int(12 * (1 - 25 / 30) ** 3 + 12), True)
    assert budget_at_step(39, **kw) == (12, True)  # the reference: (12, False) and never masked again
    kw = dict(init_bgt=100, target_bgt=10, tinit=0, tfinal=0, total_step=4, deltaT=1)
    assert [budget_at_step(s, **kw) for s in range(4)] == [(100, False), (47, True), (21, True), (10, True)]
    assert int(90 * (1 - 3 / 4) ** 3 + 10) == 11  # what the reference would have left at the last step


def test_schedule_errors_name_the_numbers():
    with pytest.raises(ValueError, match="set config.total_step"):
        budget_at_step(5, **{**DEBERTA, "total_step": None})
    with pytest.raises(ValueError, match=r"no budgeting phase: tinit=600 must be < total_step - max\(tfinal, 1\) = "
                                         r"2400 - 1800 = 600"):
        budget_at_step(5, **{**DEBERTA, "total_step": 2400})
    with pytest.raises(ValueError, match="no budgeting phase: tinit=9 must be < .* = 10 - 1 = 9"):
        validate_schedule(make_config(tinit=9, tfinal=0, total_step=10))
    with pytest.raises(ValueError, match="deltaT must be >= 1, got 0"):
        validate_schedule(make_config(deltaT=0))
    with pytest.raises(ValueError, match="total_step must be a positive int, got 0"):
        validate_schedule(with_fields(make_config(), total_step=0))
    with pytest.raises(ValueError, match=r"target budget 300 must lie in \[0, init budget 219\]"):
        budget_at_step(700, **{**DEBERTA, "target_bgt": 300})
    validate_schedule(make_config())


# ------------------------------------------------------------------------------------------ construction
def test_construction_counts_budgets_from_parameter_names():
    model = FakeModel(r=4, adapter="other")
    alloc = RankAllocator(model, make_config(target_r=1), "other")
    assert alloc.init_ranks == {m: 4 for m in MODULES}
    assert (alloc.init_bgt, alloc.target_bgt) == (24, 6)
    assert alloc.current_budget is None
    assert alloc.kept_ranks(model) == {m: 4 for m in MODULES}


def test_construction_errors():
    model = FakeModel()
    with pytest.raises(ValueError, match=r"target_r=5 must lie in \[0, init_r\]: target budget 30 vs initial budget 24"):
        RankAllocator(model, with_fields(make_config(), target_r=5), AD)
    with pytest.raises(ValueError, match="no '\\*.lora_A.nope' parameters"):
        RankAllocator(model, make_config(), "nope")
    with pytest.raises(ValueError, match="beta1 must lie strictly between 0 and 1"):
        RankAllocator(model, with_fields(make_config(), beta1=1.0), AD)


# ----------------------------------------------------------------------------------- sensitivity masking
def run(model, alloc, optimizer, steps, record=None):
    for step in steps:
        train_step(model, optimizer, step)
        alloc.update_and_allocate(model, step)
        if record is not None:
            record.append((step, alloc.current_budget, sum(alloc.kept_ranks(model).values()), kept_from_weights(model)))


def test_sensitivity_kept_ranks_equal_the_budget_after_every_mask():
    model, cfg = FakeModel(), make_config(total_step=20, tinit=2, tfinal=3, deltaT=1)
    alloc = RankAllocator(model, cfg, AD)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    record = []
    run(model, alloc, opt, range(20), record)
    budgets = [budget_at_step(s, init_bgt=24, target_bgt=12, tinit=2, tfinal=3, total_step=20, deltaT=1)[0]
               for s in range(20)]
    assert [b for _, b, _, _ in record] == budgets
    assert budgets[:3] == [24] * 3 and budgets[17:] == [12] * 3 and budgets[3] == 21
    for step, budget, kept_pattern, kept_weights in record:
        if step > 2:  # every step masks (deltaT = 1); random scores have no ties
            assert kept_pattern == kept_weights == budget, step
    assert sorted(cfg.rank_pattern) == sorted(model.lora_names())
    assert all(k.endswith(".lora_E.default") and len(v) == 4 for k, v in cfg.rank_pattern.items())
    assert sum(alloc.kept_ranks(model).values()) == 12


def test_ties_at_the_threshold_are_all_pruned():
    model = FakeModel(r=4)
    alloc = RankAllocator(model, make_config(criterion="mean"), AD)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_A." in n or ".lora_B." in n:
                p.zero_()
            elif ".lora_E." in n:
                p.copy_(torch.tensor([[1.0], [2.0], [2.0], [3.0]]))  # "mean" score |E|: ties at 2 in every module
    alloc.set_optimizer(FakeIVON(model.parameters()))
    alloc._update_posterior(model)
    pattern = alloc.mask_to_budget(model, budget=24 - 2)  # k = 2 → threshold 1.0: only the 1s go
    assert sum(map(sum, pattern.values())) == 18
    pattern = alloc.mask_to_budget(model, budget=24 - 7)  # k = 7 → threshold 2.0: all 1s and 2s go
    assert sum(map(sum, pattern.values())) == 6
    assert all(v == [False, False, False, True] for v in pattern.values())


def test_zero_gradients_prune_everything_with_a_warning():
    """Zero (not None) grads give all-zero scores and `<=` prunes every triplet, as in AdaLoRA."""
    model, cfg = FakeModel(), make_config()
    alloc = RankAllocator(model, cfg, AD)
    for step in range(3):
        for p in lora_params(model):
            p.grad = torch.zeros_like(p)
        alloc.update_and_allocate(model, step)
    with pytest.warns(RuntimeWarning, match="all 24 triplet scores are equal .*\\(was zero_grad\\(\\) called before"):
        alloc.update_and_allocate(model, 3)
    assert kept_from_weights(model) == 0 and sum(alloc.kept_ranks(model).values()) == 0


def test_triplet_score_is_e_plus_row_mean_of_a_plus_column_mean_of_b():
    model = FakeModel(r=3)
    alloc = RankAllocator(model, make_config(target_r=1, criterion="mean"), AD)
    alloc.set_optimizer(FakeIVON(model.parameters()))
    alloc._update_posterior(model)
    s = alloc.triplet_scores(model)
    assert list(s) == MODULES
    mod = model.encoder[1].value
    a, b, e = mod.lora_A[AD].abs(), mod.lora_B[AD].abs(), mod.lora_E[AD].abs()
    torch.testing.assert_close(s["encoder.1.value"], e.view(-1) + (a.mean(1) + b.mean(0)), rtol=0, atol=0)


def test_nothing_to_prune_when_target_equals_init():
    model, cfg = FakeModel(r=3), make_config(target_r=3)
    alloc = RankAllocator(model, cfg, AD)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for step in range(20):
        for p in lora_params(model):
            p.grad = torch.ones_like(p)
        alloc.update_and_allocate(model, step)
        assert alloc.current_budget == 18
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert all(all(v) for v in cfg.rank_pattern.values())


def test_target_rank_zero_prunes_everything_without_warning(recwarn):
    model, cfg = FakeModel(r=2), make_config(target_r=0, total_step=6, tinit=1, tfinal=2)
    alloc = RankAllocator(model, cfg, AD)
    run(model, alloc, torch.optim.SGD(model.parameters(), lr=0.05), range(6))
    assert alloc.current_budget == kept_from_weights(model) == 0
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_sensitivity_ema_updates_at_every_step_before_t_minus_tfinal():
    model, cfg = FakeModel(), make_config(total_step=12, tinit=2, tfinal=4, deltaT=3)
    alloc = RankAllocator(model, cfg, AD)
    name = model.lora_names("lora_A")[0]
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    changed = []
    for step in range(12):
        before = alloc.sensitivity.exp_avg_ipt.get(name, torch.zeros(1)).clone()
        train_step(model, opt, step)
        alloc.update_and_allocate(model, step)
        after = alloc.sensitivity.exp_avg_ipt.get(name, torch.zeros(1))
        changed.append(not torch.equal(before, after))
    # updated at 0..7 (warm-up included, deltaT ignored); reset at T−tf = 8; untouched in the final phase
    assert changed == [True] * 8 + [True, False, False, False]  # step 8: reset empties the state
    assert len(alloc.sensitivity) == 0


def test_sensitivity_works_with_an_ivon_like_optimizer_and_names_missing_grads():
    model = FakeModel()
    alloc = RankAllocator(model, make_config(), AD)
    opt = FakeIVON([{"params": lora_params(model)[::-1]}])
    alloc.set_optimizer(Wrapped(opt))
    run(model, alloc, opt, range(4))
    assert alloc.current_budget == sum(alloc.kept_ranks(model).values()) == kept_from_weights(model)
    opt.zero_grad(set_to_none=True)
    with pytest.raises(ValueError, match="has no gradient .*called after optimizer.step\\(\\) and before optimizer.zero_grad"):
        alloc.update_and_allocate(model, 4)


# ------------------------------------------------------------------------------------- posterior masking
@pytest.mark.parametrize("criterion", list(POSTERIOR_SCORES))
def test_posterior_scores_are_matched_by_parameter_identity(criterion):
    model = FakeModel()
    params = lora_params(model)
    perm = torch.randperm(len(params), generator=torch.Generator().manual_seed(3)).tolist()
    shuffled = [params[i] for i in perm]
    head = list(model.classifier.parameters())
    # three groups, none in model order, classifier in the middle: position-based slicing would mismatch
    opt = FakeIVON([{"params": shuffled[:5]}, {"params": head}, {"params": shuffled[5:]}])
    alloc = RankAllocator(model, make_config(criterion=criterion), AD)
    alloc.set_optimizer(Wrapped(Wrapped(opt)))
    alloc._update_posterior(model)
    fn = POSTERIOR_SCORES[criterion]
    for name, p in model.named_parameters():
        if ".lora_" in name and ".ranknum." not in name:
            torch.testing.assert_close(alloc.posterior_scores[name], fn(p.detach(), opt.sigmas[p]), rtol=0, atol=0)
    assert set(alloc.posterior_scores) == {n for n, _ in model.named_parameters() if n.endswith(
        (".lora_A.default", ".lora_B.default", ".lora_E.default"))}


def test_a_user_score_that_looks_at_whole_tensors_is_called_per_tensor(monkeypatch):
    """Built-in scores are evaluated once over all tensors concatenated; an added score is not."""
    def share_of_tensor(mu, sigma):  # not element-wise: normalised over the tensor it is given
        return mu.abs() / mu.abs().sum()

    monkeypatch.setitem(POSTERIOR_SCORES, "share", share_of_tensor)
    model = FakeModel()
    opt = FakeIVON([{"params": lora_params(model)}, {"params": list(model.classifier.parameters())}])
    alloc = RankAllocator(model, make_config(criterion="share"), AD)
    alloc.set_optimizer(opt)
    alloc._update_posterior(model)
    for name, p in model.named_parameters():
        if name in alloc.posterior_scores:
            torch.testing.assert_close(alloc.posterior_scores[name].sum(), torch.tensor(1.0))


def test_posterior_scores_recompute_only_on_deltaT_steps_inside_the_budgeting_window():
    model, cfg = FakeModel(), make_config(criterion="SNR_mean_abs", total_step=30, tinit=4, tfinal=6, deltaT=4)
    alloc = RankAllocator(model, cfg, AD)
    opt = FakeIVON(model.parameters())
    alloc.set_optimizer(opt)
    recomputed, record = [], []
    for step in range(30):
        calls = opt.sigma_calls
        train_step(model, opt, step)
        alloc.update_and_allocate(model, step)
        if opt.sigma_calls > calls:
            recomputed.append(step)
        record.append((step, alloc.current_budget, sum(alloc.kept_ranks(model).values()), kept_from_weights(model)))
    assert recomputed == [8, 12, 16, 20, 24]  # tinit < s <= T − tf = 24, s % 4 == 0
    for step, budget, kept_pattern, kept_weights in record:
        if step in recomputed or step > 24:  # masked at this step
            assert kept_pattern == kept_weights == budget, step
    assert [b for s, b, _, _ in record if s >= 24] == [12] * 6
    assert alloc.posterior_scores == {}  # reset after the final mask


def test_posterior_final_mask_computes_scores_when_none_were_taken():
    # deltaT = 7: no multiple of 7 in (tinit, T − tf] = (3, 6], so the forced final mask computes scores itself
    model, cfg = FakeModel(), make_config(criterion="SNR", total_step=10, tinit=3, tfinal=4, deltaT=7)
    alloc = RankAllocator(model, cfg, AD)
    opt = FakeIVON(model.parameters())
    alloc.set_optimizer(opt)
    run(model, alloc, opt, range(10))
    assert sum(alloc.kept_ranks(model).values()) == kept_from_weights(model) == 12


def test_posterior_criterion_needs_an_ivon_like_optimizer():
    model = FakeModel()
    alloc = RankAllocator(model, make_config(criterion="SNR_mean_abs"), AD)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="'SNR_mean_abs' \\(VILoRA\\) needs the IVON optimizer: pass it via "
                                         "set_optimizer\\(opt\\).*got Wrapped -> SGD"):
        alloc.set_optimizer(Wrapped(sgd))
    for p in lora_params(model):
        p.grad = torch.zeros_like(p)
    with pytest.raises(ValueError, match="needs the IVON optimizer.*got no optimizer"):
        alloc.update_and_allocate(model, 3)
    alloc.set_optimizer(FakeIVON(model.encoder[0].parameters()))  # misses the second block
    with pytest.raises(ValueError, match="no posterior for encoder.1.query.lora_A.default"):
        alloc.update_and_allocate(model, 3)


# ------------------------------------------------------------------------------------------- final phase
def test_final_phase_remasks_after_the_optimizer_moves_masked_entries():
    model, cfg = FakeModel(), make_config(total_step=20, tinit=2, tfinal=5)
    alloc = RankAllocator(model, cfg, AD)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    run(model, alloc, opt, range(16))
    final = copy.deepcopy(cfg.rank_pattern)
    assert kept_from_weights(model) == 12
    for step in range(16, 20):
        train_step(model, opt, step)
        assert kept_from_weights(model) > 12  # SGD revived the pruned λs
        alloc.update_and_allocate(model, step)
        assert kept_from_weights(model) == 12 and cfg.rank_pattern == final
        assert alloc.current_budget == 12


def test_tfinal_zero_masks_to_target_at_the_last_step():
    """README, fixed defect 9: the script's last call is step T−1; the original kept the last cubic mask."""
    model, cfg = FakeModel(), make_config(target_r=1, total_step=12, tinit=2, tfinal=0, deltaT=6)
    alloc = RankAllocator(model, cfg, AD)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    run(model, alloc, opt, range(11))
    # only cubic mask step is 6: int(18·(1 − 4/10)³ + 6) = 9 triplets, where the reference would stop
    assert sum(alloc.kept_ranks(model).values()) == int(18 * 0.6**3 + 6) == 9
    run(model, alloc, opt, [11])
    assert alloc.current_budget == sum(alloc.kept_ranks(model).values()) == kept_from_weights(model) == 6
    assert len(alloc.sensitivity) == 0  # final mask done, scores reset
    run(model, alloc, opt, [12, 13])  # training past T keeps re-masking
    assert kept_from_weights(model) == 6


def test_final_phase_without_a_pattern_is_a_clear_error():
    model, cfg = FakeModel(), make_config()
    alloc = RankAllocator(model, cfg, AD)
    with pytest.raises(RuntimeError, match="step 18 is in the final phase \\(after step 17\\) but config.rank_pattern is"):
        alloc.update_and_allocate(model, 18)


def test_missing_total_step_and_empty_schedule_fail_at_the_first_call():
    model = FakeModel()
    for p in lora_params(model):
        p.grad = torch.ones_like(p)
    with pytest.raises(ValueError, match="total_step is not set: set config.total_step"):
        RankAllocator(model, make_config(total_step=None), AD).update_and_allocate(model, 0)
    with pytest.raises(ValueError, match="no budgeting phase: tinit=2 must be < total_step - max\\(tfinal, 1\\) = "
                                         "5 - 3 = 2"):
        RankAllocator(model, make_config(total_step=5), AD).update_and_allocate(model, 0)


# ------------------------------------------------------------------------------------- rank-pattern masks
def test_mask_using_rank_pattern_accepts_keys_with_or_without_adapter():
    model = FakeModel(r=3, adapter="other")
    names = model.lora_names(adapter="other")
    pattern = {n: [i % 3 != 0, True, i % 2 == 0] for i, n in enumerate(names)}
    stripped = {n[: -len(".other")]: v for n, v in pattern.items()}
    for pat in (pattern, stripped):
        m = copy.deepcopy(model)
        mask_using_rank_pattern(m, pat, "other")
        for n, p in m.named_parameters():
            if n in pattern:
                assert ((p.view(-1) != 0).tolist()) == pattern[n]
    with pytest.raises(ValueError, match="rank_pattern has no entry for 'encoder.1.dense.lora_E'"):
        mask_using_rank_pattern(model, dict(list(pattern.items())[:-1]), "other")
    with pytest.raises(ValueError, match="has 2 entries but encoder.0.query.lora_E.other has rank 3"):
        mask_using_rank_pattern(model, {**pattern, names[0]: [True, False]}, "other")
    with pytest.raises(ValueError, match="rank_pattern is empty or None"):
        mask_using_rank_pattern(model, None, "other")
    with pytest.raises(ValueError, match="no '\\*.lora_E.default' parameters"):
        mask_using_rank_pattern(model, pattern, "default")


# ------------------------------------------------------------------------------------------------ resume
@pytest.mark.parametrize("criterion", ["sensitivity", "SNR_mean_abs"])
def test_state_dict_round_trip_continues_identically(criterion, tmp_path):
    kw = dict(criterion=criterion, total_step=24, tinit=3, tfinal=4, deltaT=2)

    def make():
        model = FakeModel(seed=7)
        opt = FakeIVON([{"params": lora_params(model)}, {"params": model.classifier.parameters()}])
        torch.manual_seed(11)
        opt.sigmas = {p: 0.05 + torch.rand(p.shape) for p in opt.sigmas}
        alloc = RankAllocator(model, make_config(**kw), AD)
        alloc.set_optimizer(opt)
        return model, opt, alloc

    model, opt, alloc = make()
    run(model, alloc, opt, range(9))
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "alloc": alloc.state_dict()}, tmp_path / "ck.pt")
    trace_a = []
    run(model, alloc, opt, range(9, 24), trace_a)

    model2, opt2, alloc2 = make()
    ck = torch.load(tmp_path / "ck.pt")
    model2.load_state_dict(ck["model"])
    opt2.load_state_dict(ck["opt"])
    alloc2.load_state_dict(ck["alloc"])
    assert alloc2.current_budget == budget_at_step(8, init_bgt=24, target_bgt=12, tinit=3, tfinal=4, total_step=24,
                                                   deltaT=2)[0]
    trace_b = []
    run(model2, alloc2, opt2, range(9, 24), trace_b)
    assert trace_a == trace_b
    assert alloc.config.rank_pattern == alloc2.config.rank_pattern
    for (n, p), (_, q) in zip(model.named_parameters(), model2.named_parameters()):
        assert torch.equal(p, q), n

    # without the allocator state the EMAs restart and the final pattern differs (README, fixed defect 8)
    model3, opt3, alloc3 = make()
    model3.load_state_dict(ck["model"])
    if criterion == "sensitivity":
        run(model3, alloc3, opt3, range(9, 24))
        assert alloc3.config.rank_pattern != alloc.config.rank_pattern
    with pytest.raises(ValueError, match="allocator state has criterion="):
        RankAllocator(model3, make_config(criterion="mean"), AD).load_state_dict(ck["alloc"])


# ----------------------------------------------------------------------------------------- real IVON
def test_vilora_scores_with_the_real_ivon_optimizer():
    ivon = pytest.importorskip("ivon")
    if not hasattr(ivon, "IVON"):
        pytest.skip("ivon.IVON not implemented yet")
    model = FakeModel()
    params = lora_params(model)
    opt = ivon.IVON([{"params": params[::-1]}, {"params": list(model.classifier.parameters())}], lr=0.1, ess=100.0)
    cfg = make_config(criterion="SNR_mean_abs", total_step=8, tinit=1, tfinal=2, deltaT=1)
    alloc = RankAllocator(model, cfg, AD)
    alloc.set_optimizer(Wrapped(opt))
    for step in range(8):
        g = torch.Generator().manual_seed(step)
        x, y = torch.randn(8, 6, generator=g), torch.randint(0, 2, (8,), generator=g)
        with opt.sampled_params(train=True):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        # scores use the post-step means and σ; compare before the mask zeroes some λ
        expect = {n: POSTERIOR_SCORES["SNR_mean_abs"](p.detach(), opt.posterior_sigma(p))
                  for n, p in model.named_parameters() if ".lora_" in n and ".ranknum." not in n}
        alloc.update_and_allocate(model, step)
        if 1 < step < 6:  # recomputed at 2..5; reset after the final mask at 6
            assert alloc.posterior_scores.keys() == expect.keys()
            for n, score in alloc.posterior_scores.items():
                torch.testing.assert_close(score, expect[n], rtol=0, atol=0)
                assert torch.isfinite(score).all()
    assert sum(alloc.kept_ranks(model).values()) == kept_from_weights(model) == 12
