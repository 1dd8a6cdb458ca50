"""Path-finding training regimes (online, corrupted answers, teacherless, reversed) and the goal-swap gate."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from activation_cache.errors import InputError
from ret_toolkit.planning import TaskDataModule, goal_swap, train_task
from ret_toolkit.planning.regimes import REGIMES
from ret_toolkit.planning.datamodule import task_settings
from ret_toolkit.tasks import PathTask, path_choice
from ret_toolkit.tasks.pathfinding import parse_path_prompt

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_reversed_target_is_the_forward_path_backwards_and_scored_so():
    fwd, rev = PathTask().samples(20, seed=3), PathTask(reverse=True).samples(20, seed=3)
    for a, b in zip(fwd, rev):
        assert a.prompt == b.prompt and b.meta["reverse"] == 1 and "reverse" not in a.meta
        path = a.target.split()[:-1]
        assert b.target.split() == [*path[::-1], "."]
        task = PathTask(reverse=True)
        assert task.score(b, b.target) and not task.score(b, a.target)  # the forward path is not a reversed answer
        assert path_choice(b, b.target) == int(b.meta["target_path"])


@pytest.mark.parametrize("mode", ["random", "mask"])
def test_corruption_replaces_answer_nodes_in_the_input_only(mode):
    dm = TaskDataModule("pathfinding", n_train=512, n_val=16, batch_size=64, corrupt=0.5, corrupt_mode=mode)
    dm.setup()
    hits = answers = 0
    for batch in dm.train_dataloader():
        ids, labels, answer = batch["input_ids"], batch["labels"], batch["loss_mask"].bool()
        changed = ids != labels
        node_answer = torch.zeros_like(answer)
        for b in range(len(ids)):  # answer nodes: the loss positions before "." and <eos>
            pos = answer[b].nonzero().flatten()
            node_answer[b, pos[:-2]] = True
        assert not (changed & ~node_answer).any()  # prompt, "." and <eos> untouched
        if mode == "mask":
            assert (ids[changed] == dm.pad_id).all()
        else:
            assert set(ids[changed].tolist()) <= set(dm.node_ids.tolist())
        hits += int(changed.sum())
        answers += int(node_answer.sum())
    share = hits / answers  # a random replacement can draw the same node (1 in 50): visible share 0.49
    assert 0.45 < share < 0.55
    val = dm.collate(dm.val_set)
    assert "labels" not in val  # held-out batches are never corrupted


def test_no_corruption_no_labels_and_bad_settings_are_refused():
    dm = TaskDataModule("pathfinding", n_train=64, n_val=8, batch_size=32)
    dm.setup()
    assert "labels" not in next(iter(dm.train_dataloader()))
    with pytest.raises(InputError, match="probability"):
        TaskDataModule("pathfinding", corrupt=1.5)
    with pytest.raises(InputError, match="corrupt_mode"):
        TaskDataModule("pathfinding", corrupt=0.5, corrupt_mode="swap")
    with pytest.raises(InputError, match="path-finding task only"):
        TaskDataModule("grammar", corrupt=0.5)
    with pytest.raises(InputError, match="path-finding task only"):
        TaskDataModule("grammar", reverse=True)


def _graphs(batch, dm):
    return [dm.tokenizer.decode(row[row != dm.pad_id]) for row in batch["input_ids"]]


def test_online_batches_are_fresh_every_step_and_reproducible():
    kw = dict(n_train=128, n_val=8, batch_size=32, online=True)
    a, b = TaskDataModule("pathfinding", **kw), TaskDataModule("pathfinding", **kw)
    a.setup(), b.setup()
    la, lb = a.train_dataloader(), b.train_dataloader()
    assert len(la) == 4 and a.train_samples == []
    e0, e1 = [_graphs(x, a) for x in la], [_graphs(x, a) for x in la]
    assert e0 == [_graphs(x, b) for x in lb]  # same seed, same batches
    texts = [t for batch in e0 + e1 for t in batch]
    assert len(set(texts)) == len(texts)  # no graph twice across steps and epochs
    assert [s.prompt for s in a.val_samples] == [s.prompt for s in b.val_samples]
    other = TaskDataModule("pathfinding", **{**kw, "seed": 1})
    other.setup()
    assert [_graphs(x, other) for x in other.train_dataloader()] != e0


def test_train_task_with_a_regime_records_it_in_the_exported_model(tmp_path):
    run = train_task("pathfinding", regime="teacherless", data={"n_train": 128, "n_val": 16, "batch_size": 32},
                     model={"n_layer": 1, "n_embd": 16, "n_head": 2, "eval_samples": 8}, max_epochs=1,
                     root_dir=tmp_path, progress=False)
    saved = task_settings(run.model_dir)
    assert saved["online"] is True and saved["corrupt"] == 1.0 and saved["corrupt_mode"] == "mask"
    assert run.datamodule.hparams.online and set(REGIMES) >= {"ntp", "online", "corrupt", "teacherless", "reverse"}
    assert task_settings(tmp_path) == {}
    with pytest.raises(InputError, match="unknown training regime"):
        train_task("pathfinding", regime="magic", root_dir=tmp_path)


class _PlantedPathModel(nn.Module):
    """A 'model' whose first-hop distribution is computed from the prompt: ``reads_goal`` puts 0.9 of its
    mass on the successors of s that lead to the queried goal, else it splits evenly over all of them."""

    def __init__(self, tokenizer, reads_goal: bool):
        super().__init__()
        self.tok, self.reads_goal = tokenizer, reads_goal
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask):
        V = len(self.tok)
        logits = torch.full((*input_ids.shape, V), -30.0)
        for b, row in enumerate(input_ids):
            words = self.tok.decode(row[attention_mask[b].bool()], skip_special_tokens=True).split()
            edges, s, g = parse_path_prompt(" ".join(words[:-1]))
            nxt = {}
            for a, c in edges:
                nxt.setdefault(a, []).append(c)

            def reaches(n):
                return n == g or any(reaches(m) for m in nxt.get(n, []))

            hops = nxt[s]
            good = [h for h in hops if reaches(h)]
            p = {h: (0.9 / len(good) if h in good else 0.1 / (len(hops) - len(good))) if self.reads_goal
                 else 1 / len(hops) for h in hops}
            last = int(attention_mask[b].sum()) - 1
            for h, q in p.items():
                logits[b, last, self.tok.convert_tokens_to_ids(h)] = float(np.log(q))
        return type("Out", (), {"logits": logits})()


def test_goal_swap_recovers_a_planted_goal_reader_and_clears_a_goal_blind_model():
    dm = TaskDataModule("pathfinding", n_train=8, n_val=8)
    samples = PathTask().samples(60, seed=11)
    reader = goal_swap(_PlantedPathModel(dm.tokenizer, True), dm.tokenizer, samples, n_boot=500)
    assert reader.correct == pytest.approx(0.9, abs=1e-3) and reader.decoy_swapped == pytest.approx(0.9, abs=1e-3)
    assert reader.shift == pytest.approx(0.8, abs=1e-3) and reader.uses_goal
    blind = goal_swap(_PlantedPathModel(dm.tokenizer, False), dm.tokenizer, samples, n_boot=500)
    assert blind.correct == pytest.approx(2 / 3, abs=1e-3) and blind.shift == pytest.approx(0.0, abs=1e-6)
    assert not blind.uses_goal and blind.shift_ci[0] <= 0 <= blind.shift_ci[1] + 1e-9
    assert json.loads(json.dumps(reader.to_json()))["gate"] == 0.2
    with pytest.raises(ValueError, match="reversed"):
        goal_swap(_PlantedPathModel(dm.tokenizer, True), dm.tokenizer, PathTask(reverse=True).samples(2, seed=0))


class _PlantedTeacherless(nn.Module):
    """A 'teacherless model': from the prompt alone it writes, at the position before each answer slot,
    the logits of a correct path s .. g, then "." and <eos> (whatever the answer inputs are)."""

    def __init__(self, tokenizer):
        super().__init__()
        self.tok = tokenizer
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask):
        logits = torch.full((*input_ids.shape, len(self.tok)), -30.0)
        p_id = self.tok.convert_tokens_to_ids("p")
        for b, row in enumerate(input_ids):
            end = int((row == p_id).nonzero()[0]) + 1
            edges, s, g = parse_path_prompt(self.tok.decode(row[:end], skip_special_tokens=True))
            nxt = dict(edges)
            path = [s]
            succ = [c for a, c in edges if a == s]
            for first in succ:  # the successor whose chain reaches g
                walk = [s, first]
                while walk[-1] in nxt and walk[-1] != g:
                    walk.append(nxt[walk[-1]])
                if walk[-1] == g:
                    path = walk
                    break
            answer = self.tok.convert_tokens_to_ids([*path, "."]) + [self.tok.eos_token_id]
            for j, t in enumerate(answer):
                if end - 1 + j < row.shape[0]:
                    logits[b, end - 1 + j, t] = 0.0
        return type("Out", (), {"logits": logits})()


def test_teacherless_decoder_reads_every_answer_slot_in_one_pass():
    from ret_toolkit.planning.decode import answers_correct, is_teacherless

    dm = TaskDataModule("pathfinding", n_train=8, n_val=8)
    samples = PathTask().samples(30, seed=4)
    model = _PlantedTeacherless(dm.tokenizer)
    assert all(answers_correct(model, dm.tokenizer, dm.task, samples, teacherless=True))
    assert is_teacherless(REGIMES["teacherless"]["data"]) and not is_teacherless(REGIMES["corrupt"]["data"])


def test_bad_task_json_and_bad_bootstrap_input_are_one_line_errors(tmp_path):
    from ret_toolkit.info import bootstrap_mean_ci

    (tmp_path / "task.json").write_text("{not json")
    with pytest.raises(InputError, match="task.json: not valid JSON"):
        task_settings(tmp_path)
    lo, hi = bootstrap_mean_ci(np.r_[np.zeros(50), np.ones(50)], n_boot=500)
    assert lo < 0.5 < hi and hi - lo < 0.3
    for bad in ([], [1.0, float("nan")], [[1.0, 2.0]]):
        with pytest.raises(ValueError, match="non-empty 1-D array of finite values"):
            bootstrap_mean_ci(bad)
