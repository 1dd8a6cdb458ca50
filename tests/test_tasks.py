"""Tests for ret_toolkit.tasks: path-finding and grammar generators, scorers, tokenizer, prompt export."""

from __future__ import annotations

import json

import numpy as np
import pytest

from activation_cache.prompts import read_prompts
from ret_toolkit.tasks import (DEFAULT_GRAMMAR, PCFG, GrammarTask, PathTask, TaskSample, path_choice, task_tokenizer,
                               write_prompts_jsonl)
from ret_toolkit.tasks.base import words_until_stop


def edges_of(path):
    return list(zip(path, path[1:]))


def meta_paths(s: TaskSample):
    return [json.loads(s.meta[k]) for k in ("path1", "path2", "decoy")]


def all_walks(edges, start, goal):
    """Every walk from start to goal in a DAG given as a set of (a, b) edges."""
    out = {}
    for a, b in edges:
        out.setdefault(a, []).append(b)
    found, stack = [], [[start]]
    while stack:
        walk = stack.pop()
        if walk[-1] == goal:
            found.append(walk)
            continue
        for nxt in out.get(walk[-1], []):
            assert nxt not in walk, "the sample graph has a cycle through the start"
            stack.append(walk + [nxt])
    return found


# ------------------------------------------------------------------ base


def test_sample_text_and_stop_words():
    s = TaskSample(prompt="a b", target="c .", meta={})
    assert s.text == "a b c ."
    assert TaskSample(prompt="a b", target="", meta={}).text == "a b"
    assert words_until_stop("x y . z <eos>") == (["x", "y"], ".")
    assert words_until_stop(" x  <eos> . ") == (["x"], "<eos>")
    assert words_until_stop("x y") == (["x", "y"], None)


@pytest.mark.parametrize("task", [PathTask(), PathTask(path_nodes=6, extra_edges=3), GrammarTask()],
                         ids=["path4", "path6", "grammar"])
def test_samples_deterministic_per_seed(task):
    a, b, c = task.samples(30, seed=7), task.samples(30, seed=7), task.samples(30, seed=8)
    assert a == b
    assert [s.text for s in a] != [s.text for s in c]
    assert len({s.text for s in a}) > 20  # not one sample repeated
    assert task.samples(0, seed=1) == []
    with pytest.raises(ValueError, match="n must be"):
        task.samples(-1, seed=0)
    with pytest.raises(ValueError, match="seed"):
        task.samples(3, seed=1.5)
    vocab = set(task.vocab())
    assert len(vocab) == len(task.vocab()) and task.vocab() == task.vocab()
    assert all(set(s.text.split()) <= vocab for s in a)


# ------------------------------------------------------------------ path-finding


@pytest.mark.parametrize("k", [4, 6])
def test_path_structure(k):
    task = PathTask(path_nodes=k)
    samples = task.samples(200, seed=0)
    in_path_order = 0
    for s in samples:
        p1, p2, d = meta_paths(s)
        start, goal = s.meta["start"], s.meta["goal"]
        assert len(p1) == len(p2) == len(d) == k
        assert p1[0] == p2[0] == d[0] == start and p1[-1] == p2[-1] == goal
        # P1 and P2 share only s and g; D shares only s with either
        assert set(p1) & set(p2) == {start, goal}
        assert set(d) & (set(p1) | set(p2)) == {start}
        assert len(set(p1) | set(p2) | set(d)) == 3 * k - 3
        edges = [tuple(e) for e in json.loads(s.meta["edges"])]
        assert sorted(edges) == sorted(edges_of(p1) + edges_of(p2) + edges_of(d))
        # the two correct paths are the only routes; the decoy ends where nothing leaves
        assert sorted(all_walks(set(edges), start, goal)) == sorted([p1, p2])
        assert not any(a == d[-1] for a, _ in edges) and goal not in d
        # prompt and target text
        words = s.prompt.split()
        assert words[-4:] == ["q", start, goal, "p"]
        assert words[:-4:3] == ["e"] * len(edges)
        assert list(zip(words[1:-4:3], words[2:-4:3])) == edges
        assert s.target.split() == [p1, p2][s.meta["target_path"] - 1] + ["."]
        in_path_order += edges in (edges_of(p1) + edges_of(p2) + edges_of(d),
                                   edges_of(p2) + edges_of(p1) + edges_of(d))
    assert in_path_order < 5  # edges are shuffled, not listed path by path
    first_from_start = np.mean([s.prompt.split()[1] == s.meta["start"] for s in samples])
    assert first_from_start < 0.6  # 3 of the 3(k-1) edges leave s
    share_first = np.mean([s.meta["target_path"] == 1 for s in samples])
    assert 0.35 < share_first < 0.65


def test_path_extra_edges_stay_off_the_paths():
    task = PathTask(path_nodes=4, n_node_tokens=20, extra_edges=6)
    for s in task.samples(50, seed=3):
        p1, p2, d = meta_paths(s)
        on_paths = set(p1) | set(p2) | set(d)
        edges = [tuple(e) for e in json.loads(s.meta["edges"])]
        extra = [e for e in edges if e not in set(edges_of(p1) + edges_of(p2) + edges_of(d))]
        assert len(extra) == 6 == len(set(extra))
        assert all(a not in on_paths and b not in on_paths and a != b for a, b in extra)
        assert sorted(all_walks(set(edges), s.meta["start"], s.meta["goal"])) == sorted([p1, p2])
        assert task.score(s, s.target)


@pytest.mark.parametrize("kwargs, match", [
    ({"path_nodes": 2}, "path_nodes"),
    ({"path_nodes": 6, "n_node_tokens": 17}, "n_node_tokens"),
    ({"extra_edges": -1}, "extra_edges"),
    ({"path_nodes": 4, "n_node_tokens": 12, "extra_edges": 7}, "extra_edges"),
    ({"path_nodes": 4.0}, "integer"),
])
def test_path_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PathTask(**kwargs)


def test_path_score_and_choice():
    task = PathTask(path_nodes=5)
    for s in task.samples(40, seed=11):
        p1, p2, d = meta_paths(s)
        start, goal = s.meta["start"], s.meta["goal"]
        j = " ".join
        # both correct paths pass, with or without junk after the terminator
        assert task.score(s, s.target)
        assert task.score(s, j(p1) + " . n0 e q") and path_choice(s, j(p1) + " . n0 e q") == 1
        assert task.score(s, j(p2) + " <eos> <pad>") and path_choice(s, j(p2) + " <eos>") == 2
        assert path_choice(s, s.target) == s.meta["target_path"]
        bad = [
            j(d) + " .",                           # the decoy
            j(d + [goal]) + " .",                  # decoy then a made-up edge to the goal
            j(p1[:2] + p1[3:]) + " .",             # skips a node: missing edge
            j(p1[:2] + p2[2:]) + " .",             # jumps between the two paths
            j(p1[1:]) + " .",                      # wrong start
            j(p1[:-1]) + " .",                     # stops before the goal
            j(p1 + [p1[1]]) + " .",                # runs past the goal
            j([goal, start]) + " .",               # reversed
            "", ".", "<eos> " + j(p1),             # empty answers
            j(p1[:2]) + " . " + j(p1[2:]),         # the goal only after the stop word
        ]
        for out in bad:
            assert not task.score(s, out), out
            assert path_choice(s, out) is None, out


# ------------------------------------------------------------------ grammar


def word_classes(grammar: PCFG) -> dict[str, str]:
    """terminal -> its preterminal (or itself for words written inside phrase rules)."""
    cls = {}
    for lhs, alts in grammar.rules.items():
        for _, rhs in alts:
            for w in rhs:
                if w not in grammar.rules:
                    cls.setdefault(w, lhs if len(rhs) == 1 else w)
    return cls


def test_default_grammar_samples_are_grammatical():
    task = GrammarTask()
    samples = task.samples(200, seed=0)
    lengths = []
    for s in samples:
        words = s.meta["sentence"].split()
        lengths.append(len(words))
        assert DEFAULT_GRAMMAR.is_grammatical(words), s.meta["sentence"]
        assert task.min_words <= len(words) <= task.max_words
        assert 1 <= s.meta["cut"] <= len(words) - 1
        assert s.prompt.split() == words[: s.meta["cut"]]
        assert s.target.split() == words[s.meta["cut"]:] + ["."]
        assert s.text == s.meta["sentence"] + " ."
        assert task.score(s, s.target)
        assert task.score(s, s.target + " the dog <eos>")  # junk after the period is ignored
        assert not task.score(s, s.target[:-1])  # no period
    assert 5 <= np.median(lengths) <= 15 and max(lengths) <= 40
    assert len(set(lengths)) > 8  # nesting gives varied lengths
    used = {w for s in samples for w in s.meta["sentence"].split()}
    assert {"that", "near"} <= used  # relative clauses and PPs do occur


def test_grammar_score_accepts_any_grammatical_completion():
    task = GrammarTask()
    s = TaskSample(prompt="the old dog", target="saw a cat .", meta={})
    assert task.score(s, "saw a cat .")
    assert task.score(s, "that liked my bird remembered .")  # another completion
    assert task.score(s, "heard . . .")
    assert not task.score(s, "a cat .")            # no verb
    assert not task.score(s, "saw the .")          # dangling determiner
    assert not task.score(s, "saw a cat <eos> .")  # eos before the period
    assert not task.score(s, "")


def test_grammar_rejects_corruptions():
    g = DEFAULT_GRAMMAR
    assert g.is_grammatical("the dog saw the cat".split())
    assert g.is_grammatical("the big dog that saw a cat near the tree liked my bird".split())
    assert not g.is_grammatical("the saw dog the cat".split())  # adjacent swap
    assert not g.is_grammatical("the dog the cat".split())      # verb removed
    assert not g.is_grammatical("dog the saw".split())
    assert not g.is_grammatical([])
    assert not g.is_grammatical("the dog zebra".split())        # unknown word

    cls = word_classes(g)
    rng = np.random.default_rng(0)
    swapped = dropped = 0
    sentences = [s.meta["sentence"].split() for s in GrammarTask().samples(150, seed=5)]
    for w in sentences:
        i = rng.choice([i for i in range(len(w) - 1) if cls[w[i]] != cls[w[i + 1]]])
        swapped += g.is_grammatical(w[:i] + [w[i + 1], w[i]] + w[i + 2:])
        j = rng.choice([j for j, x in enumerate(w) if cls[x] == "V"])
        dropped += g.is_grammatical(w[:j] + w[j + 1:])
    assert swapped / len(sentences) < 0.05 and dropped / len(sentences) < 0.05


def test_user_grammar_anbn():
    g = PCFG({"S": [(0.6, ("a", "S", "b")), (0.4, ("a", "b"))]})
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(100):
        w = g.sample_words(rng, max_depth=5)
        n = len(w) // 2
        # 5 random levels, then the fallback "a b" at level 6
        assert w == ["a"] * n + ["b"] * n and 1 <= n <= 6
        seen.add(n)
    assert len(seen) >= 3
    for n in range(1, 8):
        assert g.is_grammatical(["a"] * n + ["b"] * n)
    for bad in ["a a b", "a b b", "b a", "a b a b", "a", "a a b b b", "c"]:
        assert not g.is_grammatical(bad.split()), bad
    task = GrammarTask(grammar=g, prompt_words=2)
    assert task.vocab() == ["a", "b", "."]
    for s in task.samples(20, seed=1):
        assert s.prompt == "a a" and task.score(s, s.target)
    assert not task.score(TaskSample("a a", "b b .", {}), "b .")


def test_earley_on_left_recursive_ambiguous_grammar():
    g = PCFG({"E": [(0.3, ("E", "+", "E")), (0.3, ("E", "*", "E")), (0.2, ("(", "E", ")")), (0.2, ("T",))],
              "T": [(0.5, ("x",)), (0.5, ("E",))]},  # T -> E -> T is a unit cycle
             start="E")
    for ok in ["x", "x + x", "x * x + x", "( x + x ) * x", "( ( x ) )"]:
        assert g.is_grammatical(ok.split()), ok
    for bad in ["x +", "+ x", "( x", "x x", "( )"]:
        assert not g.is_grammatical(bad.split()), bad
    rng = np.random.default_rng(2)
    assert all(g.is_grammatical(g.sample_words(rng, max_depth=4)) for _ in range(30))


@pytest.mark.parametrize("rules, match", [
    ({"S": [(0.5, ("a",)), (0.4, ("b",))]}, "sum to"),
    ({"S": [(1.2, ("a",)), (-0.2, ("b",))]}, ">= 0"),
    ({"S": [(1.0, ())]}, "empty right-hand side"),
    ({"S": []}, "no alternatives"),
    ({"S": [(1.0, ("a b",))]}, "without spaces"),
    ({"S": [(1.0, ("S", "a"))]}, "never finish"),
    ({"X": [(1.0, ("a",))]}, "start symbol"),
])
def test_pcfg_bad_rules(rules, match):
    with pytest.raises(ValueError, match=match):
        PCFG(rules)


def test_grammar_task_bad_arguments():
    with pytest.raises(ValueError, match="'.'"):
        GrammarTask(PCFG({"S": [(1.0, ("a", "."))]}))
    with pytest.raises(ValueError, match="prompt_words"):
        GrammarTask(prompt_words=0)
    with pytest.raises(ValueError, match="max_words"):
        GrammarTask(prompt_words=10, max_words=8)


# ------------------------------------------------------------------ tokenizer and prompt files


def test_tokenizer_round_trip(tmp_path):
    from transformers import AutoTokenizer

    task = PathTask()
    tok = task_tokenizer(task.vocab())
    assert len(tok) == 4 + len(task.vocab())
    assert tok.padding_side == "left"
    assert [tok.pad_token, tok.bos_token, tok.eos_token, tok.unk_token] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    texts = [s.text for s in task.samples(5, seed=0)] + [s.text for s in GrammarTask().samples(5, seed=0)]
    tok_g = task_tokenizer(GrammarTask().vocab())
    tok.save_pretrained(tmp_path / "tok")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    for i, text in enumerate(texts):
        t = tok if i < 5 else tok_g
        ids = t(text)["input_ids"]
        assert ids[0] == t.bos_token_id and ids.count(t.unk_token_id) == 0
        assert len(ids) == len(text.split()) + 1  # one token a word
        assert t.decode(ids, skip_special_tokens=True) == text
        assert t.decode(t(text, add_special_tokens=False)["input_ids"]) == text
        if i < 5:
            assert loaded(text)["input_ids"] == ids
            assert loaded.decode(ids, skip_special_tokens=True) == text
    assert loaded.padding_side == "left" and loaded.bos_token_id == tok.bos_token_id
    # "." stays a separate word (no clean-up of " ." into ".")
    assert tok_g.decode(tok_g("the dog saw .")["input_ids"], skip_special_tokens=True) == "the dog saw ."
    batch = tok(["n1 n2 n3", "n1"], padding=True)["input_ids"]
    assert batch[1][:2] == [tok.pad_token_id] * 2 and batch[1][2] == tok.bos_token_id
    assert tok("n1 zebra", add_special_tokens=False)["input_ids"][1] == tok.unk_token_id


@pytest.mark.parametrize("vocab, match", [
    ([], "empty"), (["a", "a"], "twice"), (["a b"], "whitespace"), (["<eos>"], "special"), (["##x"], "##"),
])
def test_tokenizer_bad_vocab(vocab, match):
    with pytest.raises(ValueError, match=match):
        task_tokenizer(vocab)


def test_write_prompts_jsonl_reads_back(tmp_path):
    paths = PathTask().samples(4, seed=0)
    path_file = write_prompts_jsonl(paths, tmp_path / "paths.jsonl")
    prompts = read_prompts(str(path_file))
    assert [p.prompt_id for p in prompts] == [f"pathfinding-{i}" for i in range(4)]
    for p, s in zip(prompts, paths):
        assert p.text == s.prompt
        assert all(isinstance(v, str) for v in p.meta.values())
        assert set(p.meta) == set(s.meta)
        assert json.loads(p.meta["path1"]) == json.loads(s.meta["path1"])
        assert json.loads(p.meta["edges"]) == json.loads(s.meta["edges"])
        assert p.meta["target_path"] == str(s.meta["target_path"]) and p.meta["start"] == s.meta["start"]
        # the scorer still works on a sample rebuilt from the file's strings
        rebuilt = TaskSample(prompt=p.text, target="", meta=p.meta)
        assert path_choice(rebuilt, s.target) == s.meta["target_path"]

    grams = GrammarTask().samples(3, seed=0)
    [g0, *_] = read_prompts(str(write_prompts_jsonl(grams, tmp_path / "g.jsonl")))
    assert g0.prompt_id == "grammar-0" and g0.meta == {"task": "grammar", "sentence": grams[0].meta["sentence"],
                                                       "cut": str(grams[0].meta["cut"])}
    odd = [TaskSample("a b", "c .", {"xs": [1, 2], "flag": True, "d": {"k": 1}})]
    [o] = read_prompts(str(write_prompts_jsonl(odd, tmp_path / "o.jsonl", task_name="toy")))
    assert o.prompt_id == "toy-0" and o.meta == {"xs": "[1, 2]", "flag": "true", "d": '{"k": 1}'}
    with pytest.raises(ValueError, match="clash"):
        write_prompts_jsonl([TaskSample("a", "b", {"id": 3})], tmp_path / "x.jsonl")
    with pytest.raises(ValueError, match="no samples"):
        write_prompts_jsonl([], tmp_path / "y.jsonl")
