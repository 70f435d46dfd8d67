"""Event head: the log-normal mixture against scipy (density, survival, mean), the sequence
likelihood against one assembled by hand from the streamed distributions, streaming equals
parallel after every event (Aaren and the Transformer), padding changes nothing, sampling
matches the distribution, and the CLI end to end (fit, resume, bad file)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from aaren_rl.cli import main
from aaren_rl.data.events import EventData, write_event_json
from aaren_rl.heads.events import EventConfig, EventModel, event_metrics, sequence_loss
from aaren_rl.heads.events_cli import synthetic_process
from aaren_rl.heads.registry import get_head
from aaren_rl.nn.build import build_backbone


@pytest.fixture(autouse=True)
def _no_grad(request):
    """Model checks run without autograd; the CLI tests train, so they keep it."""
    with torch.set_grad_enabled("cli" in request.node.name):
        yield


def _data(name="hawkes5", n=20, end=12.0, seed=0) -> EventData:
    return EventData.synthetic(synthetic_process(name), n, end, seed=seed)


def _model(data: EventData, backbone: str, dtype=torch.float64) -> EventModel:
    torch.manual_seed(0)
    head = get_head("events")
    model = head.build_model(data, build_backbone(backbone, 16, 2, 2, dropout=0.0), dropout=0.0)
    with torch.no_grad():  # spread the mixture so every term matters
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.to(dtype).eval()


def _batch(seqs, rows, dtype=torch.float64) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in seqs.batch(np.asarray(rows), np.float64).items():
        t = torch.from_numpy(v)
        out[k] = t.to(dtype) if t.is_floating_point() else t
    return out


def test_mixture_matches_scipy_lognormal_mixture():
    data = _data()
    model = _model(data, "aaren")
    cfg = model.config
    seqs = data.splits["train"]
    b = _batch(seqs, [0])
    dist = model.distributions(b["gaps"], b["times"], b["marks"]).index((0, 3))
    w = dist.log_weights.exp().detach().numpy()
    mu = cfg.log_gap_mean + cfg.log_gap_std * dist.loc.detach().numpy()
    sd = cfg.log_gap_std * dist.log_scale.exp().detach().numpy()
    comps = [stats.lognorm(s=s, scale=np.exp(m)) for m, s in zip(mu, sd, strict=True)]
    taus = np.array([1e-3, 0.05, 0.3, 1.0, 4.0])
    pdf = sum(wi * c.pdf(taus) for wi, c in zip(w, comps, strict=True))
    sf = sum(wi * c.sf(taus) for wi, c in zip(w, comps, strict=True))
    t = torch.from_numpy(taus)
    np.testing.assert_allclose(dist.log_prob_time(t).exp().detach().numpy(), pdf, rtol=1e-9)
    np.testing.assert_allclose(dist.log_survival(t).exp().detach().numpy(), sf, rtol=1e-9)
    mean = sum(wi * c.mean() for wi, c in zip(w, comps, strict=True))
    assert float(dist.mean().detach()) == pytest.approx(mean, rel=1e-9)

    # S(a) - S(b) is the integral of the density on [a, b] (numerically, over log tau)
    def density_in_log(u: float) -> float:
        x = torch.tensor(np.exp(u), dtype=torch.float64)
        return float(dist.log_prob_time(x).exp().detach()) * np.exp(u)

    area = integrate.quad(density_in_log, np.log(taus[0]), np.log(taus[3]), limit=200)[0]
    assert sf[0] - sf[3] == pytest.approx(area, rel=1e-7)
    # mark probabilities are a distribution at every time; intensities sum to p / S
    lp = dist.mark_log_probs(t).exp().detach().numpy()
    np.testing.assert_allclose(lp.sum(axis=-1), 1.0)
    np.testing.assert_allclose(dist.intensity(t).sum(-1).detach().numpy(), pdf / sf, rtol=1e-8)


@pytest.mark.parametrize("backbone", ["aaren", "transformer"])
def test_streaming_equals_parallel_after_every_event(backbone):
    data = _data()
    model = _model(data, backbone)
    seqs = data.splits["train"]
    row = int(np.argmax(seqs.lengths))
    b = _batch(seqs, [row])
    parallel = model.distributions(b["gaps"], b["times"], b["marks"])
    stream = model.stream(1)
    taus = torch.tensor([0.01, 0.2, 1.5], dtype=torch.float64)
    for i in range(int(b["lengths"][0])):
        d = stream.observe(b["times"][:, i], b["marks"][:, i])
        p = parallel.index((slice(None), i))
        for name in ("logits", "loc", "log_scale", "hidden"):
            torch.testing.assert_close(getattr(d, name), getattr(p, name), rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(d.mean(), p.mean(), rtol=1e-9, atol=0)
        torch.testing.assert_close(
            d.index(0).intensity(taus), p.index(0).intensity(taus), rtol=1e-9, atol=1e-12
        )
    assert stream.n_events == int(b["lengths"][0])


@pytest.mark.parametrize("backbone", ["aaren", "transformer"])
def test_sequence_likelihood_equals_hand_assembled_and_padding_changes_nothing(backbone):
    data = _data()
    model = _model(data, backbone)
    seqs = data.splits["train"]
    rows = [0, 1, 2]
    out = model(_batch(seqs, rows))
    for j, r in enumerate(rows):
        t, k, end = seqs.times[r], seqs.marks[r], float(seqs.end[r])
        stream = model.stream(1)
        ll = 0.0
        for i in range(len(t)):
            d = stream.observe(torch.tensor([t[i]]), torch.tensor([k[i]])).index(0)
            if i + 1 < len(t):
                gap = torch.tensor(t[i + 1] - t[i], dtype=torch.float64)
                ll += float(d.log_prob_time(gap)) + float(d.mark_log_probs(gap)[k[i + 1]])
            else:
                ll += float(d.log_survival(torch.tensor(end - t[i], dtype=torch.float64)))
        total = out["time_ll"][j] + out["mark_ll"][j] + out["survival_ll"][j]
        assert float(total) == pytest.approx(ll, rel=1e-9)
        alone = model(_batch(seqs, [r]))  # no padding at all
        for key in ("time_ll", "mark_ll", "survival_ll", "n_events"):
            assert float(alone[key][0]) == pytest.approx(float(out[key][j]), rel=1e-9)
    loss = sequence_loss(out)
    assert float(loss) == pytest.approx(
        -float((out["time_ll"] + out["mark_ll"] + out["survival_ll"]).sum())
        / float(out["n_events"].sum())
    )


def test_metrics_follow_their_definitions():
    data = _data()
    model = _model(data, "aaren")
    seqs = data.splits["test"]
    metrics = event_metrics(model, seqs, torch.device("cpu"), batch_size=3)
    out = model(_batch(seqs, range(len(seqs))))
    n = seqs.n_scored
    total = out["time_ll"] + out["mark_ll"] + out["survival_ll"]
    assert metrics["nll_per_event"] == pytest.approx(-float(total.sum()) / n, rel=1e-6)
    s = out["scored"]
    rmse = float(((out["mean_gap"] - out["target_gap"])[s] ** 2).mean().sqrt())
    assert metrics["rmse"] == pytest.approx(rmse, rel=1e-6)
    assert metrics["mark_accuracy"] == pytest.approx(float(out["mark_correct"][s].double().mean()))


def test_sampling_matches_the_distribution_and_generate_leaves_the_stream():
    data = _data()
    model = _model(data, "aaren")
    seqs = data.splits["train"]
    stream = model.stream(1)
    for t, k in zip(seqs.times[0][:4], seqs.marks[0][:4], strict=True):
        stream.observe(torch.tensor([t]), torch.tensor([k]))
    d = stream.next_event()
    # many draws from the same distribution: a batch of identical rows
    n = 20000
    rep = type(d)(model, *(x.expand(n, -1) for x in (d.logits, d.loc, d.log_scale, d.hidden)))
    gen = torch.Generator().manual_seed(0)
    tau, mark = rep.sample(gen)
    # empirical CDF at a few points vs 1 - S
    for q in (0.1, 0.5, 1.0):
        cdf = 1 - float(d.log_survival(torch.tensor([q], dtype=torch.float64)).exp())
        assert float((tau <= q).double().mean()) == pytest.approx(cdf, abs=0.015)
    # marks: the average of p(k | tau) over the sampled times
    probs = rep.mark_log_probs(tau).exp().mean(dim=0)
    freq = torch.bincount(mark, minlength=5).double() / n
    torch.testing.assert_close(freq, probs, atol=0.015, rtol=0)
    before = (d.logits.clone(), stream.last_time.clone(), stream.n_events)
    times, marks = stream.generate(5, gen)
    assert times.shape == (1, 5) and marks.shape == (1, 5)
    assert torch.all(times[:, 1:] >= times[:, :-1]) and torch.all(times[:, 0] >= before[1])
    assert torch.equal(stream.next_event().logits, before[0]) and stream.n_events == before[2]
    # feeding the generated events gives the same distributions generate saw
    t2, _ = stream.observe(times[:, 0], marks[:, 0]).sample(torch.Generator().manual_seed(1))
    assert t2.shape == (1,)


def test_config_rejects_nonsense():
    with pytest.raises(ValueError):
        EventConfig(n_marks=0)
    with pytest.raises(ValueError):
        EventConfig(n_marks=2, mean_gap=0.0)


def test_stream_rejects_time_going_back():
    data = _data()
    stream = _model(data, "aaren").stream(1)
    stream.observe(torch.tensor([1.0]), torch.tensor([0]))
    with pytest.raises(ValueError, match="must not decrease"):
        stream.observe(torch.tensor([0.5]), torch.tensor([0]))


def test_cli_fits_both_backbones_resumes_and_reports(tmp_path):
    out = tmp_path / "run"
    args = [
        "fit",
        "events",
        "--synthetic",
        "hawkes1",
        "--n-sequences",
        "40",
        "--window",
        "15",
        "--d-model",
        "16",
        "--n-heads",
        "2",
        "--steps",
        "6",
        "--batch-size",
        "8",
        "--eval-every",
        "3",
        "--checkpoint-every",
        "3",
        "--out",
        str(out),
        "--no-progress",
        "--write-data",
        str(tmp_path / "data"),
    ]
    assert main([*args, "--backbone", "aaren,transformer"]) == 0
    table = (out / "comparison.md").read_text()
    assert "test_nll_per_event" in table and "true process" in table
    row = json.loads((out / "aaren" / "results.json").read_text())
    assert row["stream_vs_parallel_max_abs_diff"] < 1e-4
    assert row["oracle_test"]["mark_accuracy"] == 1.0
    assert (out / "aaren" / "predictions.png").is_file() and (out / "aaren" / "tb").is_dir()
    # resume to more steps from the checkpoint
    args[args.index("--steps") + 1] = "9"
    assert main([*args, "--backbone", "aaren", "--resume"]) == 0
    assert json.loads((out / "aaren" / "results.json").read_text())["step"] == 9
    # the written data loads back through --train/--val/--test
    d = tmp_path / "data"
    files = [
        "--train",
        str(d / "train.json"),
        "--val",
        str(d / "val.json"),
        "--test",
        str(d / "test.json"),
    ]
    common = [
        "--d-model",
        "16",
        "--n-heads",
        "2",
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--no-progress",
    ]
    assert main(["fit", "events", *files, *common, "--out", str(tmp_path / "files")]) == 0


def test_cli_bad_event_file_is_one_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"time_since_start": [0, 1], "time_since_last_event": [0, 1]}]))
    code = main(
        [
            "fit",
            "events",
            "--train",
            str(bad),
            "--val",
            str(bad),
            "--test",
            str(bad),
            "--out",
            str(tmp_path / "o"),
            "--no-progress",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "bad.json: sequence 0: missing field 'type_event'" in err


def test_generated_data_survives_the_file_round_trip(tmp_path):
    data = _data("sinusoid", n=10, end=20.0)
    write_event_json(tmp_path / "s.json", data.splits["train"])
    back = EventData.from_files(*(str(tmp_path / "s.json"),) * 3)
    assert back.n_marks == 3 and back.process is None and back.oracle("test") == {}
