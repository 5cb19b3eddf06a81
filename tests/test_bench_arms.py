"""The bench's arms files are checked like any run config, before anything trains: an arm with a bad
setting must fail in a second, not after the arms before it have trained for hours. And the bench's
fresh question samples ask new things about the same entities."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dgpo_agent.errors import DGPOError
from dgpo_agent.training.run import RunDir
from tests.bench_scripts import bench_script

ROOT = Path(__file__).resolve().parents[1]
ARMS_FILES = sorted((ROOT / "bench" / "arms").glob("*.yaml"))


def _rl_compare():
    return bench_script("rl_compare")


@pytest.mark.parametrize("path", ARMS_FILES, ids=lambda p: p.name)
def test_every_shipped_arm_is_a_valid_run(path, tmp_path):
    rl_compare = _rl_compare()
    for arm, spec in rl_compare.read_arms(path).items():
        cfg = rl_compare.arm_config("tiny", None, tmp_path, arm, spec, seed=1)
        assert cfg.rl.method == spec["method"] and cfg.rl.seed == 1 and cfg.rl.baselines == []
        trained = cfg.rl.for_method(cfg.rl.method)  # what the arm trains: no setting of it is dropped
        for key, value in spec.get("rl", {}).items():
            assert getattr(trained if hasattr(trained, key) else cfg.rl, key) == value, (arm, key)


def test_a_bad_arm_is_refused_before_anything_trains(tmp_path):
    arms = tmp_path / "arms.yaml"
    arms.write_text("dgpo: {method: dgpo}\nbad: {method: dgpo, rl: {kl_onn: all}}\n")
    run = RunDir(tmp_path / "prepared")
    run.stages.mkdir(parents=True)  # looks prepared, so only the arm can fail
    run.marker("cold-start").write_text("{}")
    run.config.write_text('{"preset": "tiny"}')
    work = tmp_path / "work"
    cmd = [sys.executable, str(ROOT / "bench" / "rl_compare.py"), "--run", str(run.root), "--arms-file", str(arms), "--work", str(work)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "kl_onn" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not work.exists()


def test_an_unprepared_run_is_named_with_the_fix(tmp_path):
    with pytest.raises(DGPOError, match="--stop-after cold-start"):
        _rl_compare().prepared_preset(tmp_path / "missing")


def test_arms_of_a_file_are_picked_by_name():
    rl_compare = _rl_compare()
    path = ROOT / "bench" / "arms" / "kl_on.yaml"
    assert list(rl_compare.select_arms(path, ["dgpo-kl-all"])) == ["dgpo-kl-all"]
    assert list(rl_compare.select_arms(path, None)) == list(rl_compare.read_arms(path))
    assert list(rl_compare.select_arms(None, ["ppo"])) == ["ppo"]
    with pytest.raises(DGPOError, match="no arm dgpo-kl-al in"):
        rl_compare.select_arms(path, ["dgpo-kl-al"])


def _result(path: Path, arm: str, seed: int, em: float, spec: dict | None = None) -> Path:
    results = {"cold-start-kd": {"all": 0.4}, spec["method"] if spec else "dgpo": {"all": em}}
    path.write_text(json.dumps({"arms": {arm: spec or {"method": "dgpo"}}, "runs": {arm: {str(seed): {"rl": {}, "results": results}}}}))
    return path


def test_runs_of_separate_processes_merge_into_one_table(tmp_path):
    rl_compare = _rl_compare()
    files = [_result(tmp_path / f"seed{seed}.json", "dgpo", seed, em) for seed, em in ((0, 0.45), (1, 0.47))]
    files.append(_result(tmp_path / "gkd.json", "gkd", 0, 0.40, {"method": "gkd"}))
    arms, runs = rl_compare.merge_results(files)
    assert list(arms) == ["dgpo", "gkd"] and sorted(runs["dgpo"]) == [0, 1]
    table = rl_compare.summarise(runs, arms)
    assert table["dgpo"]["all"] == [0.45, 0.47] and table["gkd"]["all"] == [0.40] and table["cold-start-kd"]["all"] == [0.4]
    assert rl_compare.paired_gaps(runs, arms, "dgpo") == {"gkd": [-0.05]}


def test_merging_refuses_a_run_twice_or_an_arm_with_other_settings(tmp_path):
    rl_compare = _rl_compare()
    first = _result(tmp_path / "a.json", "dgpo", 0, 0.45)
    with pytest.raises(DGPOError, match="seed 0 is in"):
        rl_compare.merge_results([first, _result(tmp_path / "b.json", "dgpo", 0, 0.46)])
    other = _result(tmp_path / "c.json", "dgpo", 1, 0.46, {"method": "dgpo", "rl": {"kl_on": "all"}})
    with pytest.raises(DGPOError, match="other settings"):
        rl_compare.merge_results([first, other])
    (tmp_path / "log.txt").write_text("not json")
    cmd = [sys.executable, str(ROOT / "bench" / "rl_compare.py"), "--merge", str(first), str(tmp_path / "log.txt"), "--out", str(tmp_path / "out.json")]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode != 0 and "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert "log.txt is not an rl_compare results file" in done.stderr and not (tmp_path / "out.json").exists()


def test_merging_keeps_only_the_named_arms_in_their_order(tmp_path):
    rl_compare = _rl_compare()
    both = tmp_path / "both.json"
    both.write_text(json.dumps({
        "arms": {"dgpo": {"method": "dgpo"}, "gkd": {"method": "gkd"}},
        "runs": {"dgpo": {"0": {"results": {"dgpo": {"all": 0.1}}}}, "gkd": {"0": {"results": {"gkd": {"all": 0.2}}}}},
    }))
    again = _result(tmp_path / "again.json", "dgpo", 0, 0.3)  # dgpo seed 0 twice: left out, so no clash
    arms, runs = rl_compare.merge_results([both, again], ["gkd"])
    assert list(arms) == ["gkd"] and list(runs) == ["gkd"]
    with pytest.raises(DGPOError, match="no arm ppo in the merged files"):
        rl_compare.merge_results([both], ["ppo"])


def test_the_table_shows_a_spread_only_over_seeds():
    rl_compare = _rl_compare()
    lines = rl_compare.markdown({"teacher": {"all": [0.8017]}, "dgpo": {"all": [0.47, 0.49, 0.48]}, "one-seed": {"all": [0.4533]}})
    assert lines[2] == "| teacher | 0.802 |"
    assert lines[3] == "| dgpo | 0.480 ± 0.010 |"
    assert lines[4] == "| one-seed | 0.453 |"


def test_fresh_questions_ask_new_things_about_the_same_entities(small_world, tmp_path):
    """`bench/fresh_questions.py`: a second sample of a split repeats none of its questions, names
    only that split's entities, keeps its mix of families, and is the same on every run."""
    from dgpo_agent.world import load_questions

    runs = [tmp_path / "first.jsonl", tmp_path / "second.jsonl"]
    for out in runs:
        subprocess.run([sys.executable, ROOT / "bench" / "fresh_questions.py", "--world", small_world, "--split", "dev",
                        "--questions", "40", "--out", out], check=True, capture_output=True)
    assert runs[0].read_bytes() == runs[1].read_bytes()
    fresh = load_questions(runs[0])
    own = load_questions(small_world / "dev.jsonl")
    split_of = json.loads((small_world / "kb.json").read_text())["splits"]
    assert {split_of[e] for q in fresh for e in q["entities"]} == {"dev"}
    assert not {(q["family"], tuple(q["entities"])) for q in fresh} & {(q["family"], tuple(q["entities"])) for q in own}
    assert len({q["id"] for q in fresh}) == len(fresh) > 0
    families = {q["family"] for q in fresh}
    assert families <= {q["family"] for q in own} and len(families) > 1


def test_the_lift_curve_draws_runs_replayed_at_every_step_one_line_per_arm(tmp_path):
    """`rl_question_difficulty.py --plot`: each arm's runs (one parent folder) as one line of the
    logged reward minus the starting policy's, step by step; a run replayed only at its two ends has
    no middle to draw and is left out."""
    script = bench_script("rl_question_difficulty")

    def row(steps, logged, start):
        return {"steps": steps, "logged_reward": dict(zip(map(str, steps), logged)), "start_reward": dict(zip(map(str, steps), start))}

    results = {
        "runs/bench/dgpo/seed0": row([1, 2, 3], [0.5, 0.75, 0.5], [0.5, 0.5, 0.25]),
        "runs/bench/dgpo/seed1": row([1, 2, 3], [0.25, 0.5, 1.0], [0.25, 0.5, 0.5]),
        "runs/bench/ppo/seed0@3": row([1, 2, 3], [0.5, 0.5, 0.5], [0.5, 0.75, 0.5]),
        "runs/bench/pool/seed0": row([1, 2, 5, 6], [0.5, 0.5, 0.75, 0.75], [0.5, 0.5, 0.5, 0.5]),
    }
    arms = script.lift_curves(results)
    assert list(arms) == ["dgpo", "ppo"]
    assert [[e["lift"] for e in run] for run in arms["dgpo"]] == [[0.0, 0.25, 0.25], [0.0, 0.0, 0.5]]
    assert [e["lift"] for e in arms["ppo"][0]] == [0.0, -0.25, 0.0]
    assert script.plot_lift(arms, tmp_path / "lift.png").stat().st_size > 0
    with pytest.raises(SystemExit, match="--every-step"):
        script.plot_lift(script.lift_curves({"runs/bench/pool/seed0": results["runs/bench/pool/seed0"]}), tmp_path / "none.png")


@pytest.mark.parametrize(("flags", "error"), [
    (["--plot", "x.png"], "error: --plot draws the runs of the --out file: add --out FILE"),
    (["--by-source", "--out", "x.json"], "error: --by-source splits the draws after the run's last step: add --ahead K"),
])
def test_the_lift_replay_refuses_an_option_without_the_one_it_needs(tmp_path, flags, error):
    """One line and a non-zero exit before anything is replayed or written."""
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "rl_question_difficulty.py"), "--run", str(tmp_path), *flags],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode != 0 and done.stderr.strip() == error
    assert not list(tmp_path.iterdir())


def test_a_compare_rollout_reads_the_year_its_passage_states_not_the_filler_year():
    """`copy_diagnosis.py`'s year read: after a search that found an evidence passage, the next thought
    must state the year the passage gives as its fact; a filler sentence's year, or a search that found
    no evidence passage, does not count as read."""
    script = bench_script("copy_diagnosis")
    passage = {"id": "p1", "text": "Zeithla Systems held a large conference in Kourzul in 2011. Zeithla Systems was established in 1985."}

    def row(thought: str, docs: list[dict]) -> dict:
        return {"evidence": ["p1", "p2"], "steps": [
            {"kind": "think", "text": "I need to find when Zeithla Systems was founded."},
            {"kind": "search", "query": "Zeithla Systems founded", "docs": docs},
            {"kind": "think", "text": thought},
        ]}

    assert script._years_read(row("Zeithla Systems was founded in 1985.", [passage])) == [True]
    assert script._years_read(row("Zeithla Systems was founded in 2011.", [passage])) == [False]
    assert script._years_read(row("Zeithla Systems was founded in 1985.", [{**passage, "id": "p9"}])) == []
    assert script._years_read(row("I need to search again.", [passage])) == []


def test_a_compare_answer_is_counted_as_the_questions_first_name_among_named_answers_only():
    """`copy_diagnosis.py`'s first-name share: of the compare answers that name one of the question's
    two entities, how many name the first; an answer naming neither counts in neither part."""
    script = bench_script("copy_diagnosis")

    def row(answer: str, em: float) -> dict:
        return {"data_source": "world_compare", "entities": ["Zeithla Systems", "Groden Institute"], "evidence": [],
                "answer": answer, "scores": {"em": em, "evidence_recall": 1.0}, "steps": []}

    rows = [row("Zeithla Systems", 1.0), row("zeithla systems", 0.0), row("Groden Institute", 1.0), row("Kourzul", 0.0)]
    measured = script.diagnose(rows)
    assert measured["names_one"] == 0.75 and measured["first_named"] == 2 / 3 and measured["right_when_named"] == 2 / 3


def test_a_stated_comparison_is_checked_step_by_step_word_choice_place_and_name():
    """`compare_step.py`: of the answers whose thought states the comparison's step in any style, the
    word must be the one the question asks for, the choice (its year, or the year in its place) the
    earlier (later) of the two, the place (where a year is given too) the one holding that year, and the
    answer the entity the thought gave the choice's year, and (where a place is named) the entity
    stated in that place, whichever way round the thought states its facts; an answer without the step
    counts only in how often the step is stated."""
    script = bench_script("compare_step")
    facts = "Zeithla Systems was founded in 1985. Groden Institute was founded in 1967."

    def row(question: str, step: str, answer: str) -> dict:
        return {"question": question, "entities": ["Zeithla Systems", "Groden Institute"], "answer": answer,
                "steps": [{"kind": "think", "text": f"{facts} {step} So the answer is {answer}."}]}

    first, later = "Which was founded first, Zeithla Systems or Groden Institute?", "Which was founded later, Zeithla Systems or Groden Institute?"
    rows = [
        row(first, "The earlier of 1985 and 1967 is 1967.", "Groden Institute"),  # right throughout
        row(later, "The earlier of 1985 and 1967 is 1967.", "Groden Institute"),  # the wrong word
        row(first, "The earlier of 1985 and 1967 is 1985.", "Groden Institute"),  # the wrong choice, and a name not given it
        row(first, "The earlier of 1985 and 1972 is 1972.", "Groden Institute"),  # a year given to neither entity
        row(first, "", "Groden Institute"),  # no step
    ]
    assert script.stated_steps(rows) == pytest.approx(
        {"step_stated": 0.8, "step_word": 0.75, "step_year": 0.75, "step_place": None, "step_name": 2 / 3, "step_follows": None}, abs=1e-4)
    placed = [
        row(first, "The earlier of 1985 and 1967 is the second.", "Groden Institute"),  # right, by place
        row(first, "The earlier of 1985 and 1967 is the first.", "Groden Institute"),  # the wrong place, its name not followed
        row(first, "The earlier of 1985 and 1967 is 1967, the first.", "Zeithla Systems"),  # a place not holding the year, followed
    ]
    assert script.stated_steps(placed) == pytest.approx(
        {"step_stated": 1.0, "step_word": 1.0, "step_year": 2 / 3, "step_place": 0.0, "step_name": 1 / 3, "step_follows": 2 / 3}, abs=1e-4)
    facts = "In 1985, Zeithla Systems was founded. In 1967, Groden Institute was founded."  # year first, as keyed says them
    keyed = [
        row(first, "The earlier of 1985 and 1967 is 1967, Groden Institute.", "Groden Institute"),  # right throughout
        row(first, "The earlier of 1985 and 1967 is 1967, Zeithla Systems.", "Zeithla Systems"),  # the year's name miscopied
    ]
    assert script.stated_steps(keyed) == pytest.approx(
        {"step_stated": 1.0, "step_word": 1.0, "step_year": 1.0, "step_place": None, "step_name": 0.5, "step_follows": None}, abs=1e-4)


def test_year_drills_say_the_right_year_and_never_drill_a_held_out_pair():
    """`year_order.py`: each drill names the earlier (later) of its two years in the oracle's words, and
    no held-out pair is drilled in either order, so the probe measures an order learnt, not pairs seen."""
    import itertools
    import random
    import re

    script = bench_script("year_order")
    held_out = {frozenset(p) for p in itertools.islice(itertools.combinations(range(1900, 2023), 2), 0, None, 3)}
    stream = script.drills(random.Random(0), held_out)
    for text in itertools.islice(stream, 500):
        for word, first, second, chosen in re.findall(r"The (earlier|later) of (\d{4}) and (\d{4}) is (\d{4})\.", text):
            assert frozenset((int(first), int(second))) not in held_out
            assert chosen == (min if word == "earlier" else max)(first, second)
    assert script.drill("max", 1916, 1962) == "The later of 1916 and 1962 is 1962."


def test_keyed_drills_bind_the_chosen_year_to_the_name_it_was_stated_with():
    """`year_order.py --style keyed`: each drill states two facts about fresh names, year first, and the
    step gives the chosen year and the name stated with it; the probe's cue ends at the chosen year, so
    what the model must complete is that name, and no world name is ever drilled."""
    import itertools
    import random
    import re

    from dgpo_agent.world import NameGenerator

    script = bench_script("year_order")
    world = {"Zeithla Systems", "Groden Institute"}
    lines = [line for text in itertools.islice(script.drills(random.Random(0), set(), "keyed", NameGenerator(0, world)), 200) for line in text.splitlines()]
    drill = r"In (\d{4}), (.+?) (?:was born|was founded|came out)\. In (\d{4}), (.+?) (?:was born|was founded|came out)\. The (earlier|later) of \1 and \3 is (\d{4}), (.+?)\."
    for line in lines:
        first, first_name, second, second_name, word, chosen, name = re.fullmatch(drill, line).groups()
        assert first_name != second_name and not {first_name, second_name} & world and not set(" ".join((first_name, second_name)).split()) & {"Zeithla", "Groden"}
        assert chosen == (min if word == "earlier" else max)(first, second) and name == {first: first_name, second: second_name}[chosen]
        assert script.cue(line, "keyed") == (line.rpartition(", ")[0] + ",", name)
    assert script.cue("The earlier of 1962 and 1916 is 1916.", "stated") == ("The earlier of 1962 and 1916 is", "1916")
    assert script.drill("min", 1962, 1916, "keyed", ("birth_year", "A Bo", "C Do")) == (
        "In 1962, A Bo was born. In 1916, C Do was born. The earlier of 1962 and 1916 is 1916, C Do.")


def test_keyed_episodes_are_whole_compare_answers_about_fresh_names():
    """`compare_step.py`'s ``episodes`` arm: each episode searches both fresh entities, finds one
    passage each, and answers with the entity whose year the question wants, the keyed step naming it
    after the chosen year; no reserved world name is ever used."""
    import itertools
    import random
    import re

    from dgpo_agent import protocol
    from dgpo_agent.world import NameGenerator

    script = bench_script("compare_step")
    world = {"Zeithla Systems", "Groden Institute"}
    for text in itertools.islice(script.keyed_episodes(random.Random(0), NameGenerator(0, world)), 100):
        assert text.count("<search>") == 2 and text.count("<information>") == 2 and "Zeithla" not in text and "Groden" not in text
        years = dict((name, year) for year, name in re.findall(r"In (\d{4}), (.+?) (?:was born|was founded|came out)\.", text.rsplit("<think>", 1)[1]))
        word, chosen, name = re.search(r"The (earlier|later) of \d{4} and \d{4} is (\d{4}), (.+?)\.", text).groups()
        assert len(years) == 2 and chosen == (min if word == "earlier" else max)(years.values()) and years[name] == chosen
        assert protocol.parse_action(text.rsplit("</information>", 1)[1]).content == name


def test_styled_demonstrations_are_rolled_out_apart_from_the_runs_own(small_world, small_store, tmp_path):
    """`copy_curriculum.demonstrations`, as `keyed_teacher.py` trains on them: in a comparison style
    the oracle's whole training split is rolled out into its own file, never the run's default-style
    demonstrations reused, and only its compare answers change."""
    script = bench_script("copy_curriculum")
    run = tmp_path / "run"
    (run / "oracle").mkdir(parents=True)
    (run / "world").symlink_to(small_world)
    RunDir(run).oracle_split("train").write_text("")  # the run's own, default-style demonstrations
    assert script.demonstrations(run, tmp_path, None) == RunDir(run).oracle_split("train")
    keyed = script.demonstrations(run, tmp_path / "keyed", "keyed")
    rows = [json.loads(line) for line in keyed.read_text().splitlines()]
    assert keyed.name == "oracle-train-keyed.jsonl" and len(rows) == sum(1 for _ in (small_world / "train.jsonl").open())
    answers = {r["data_source"]: [s["text"] for s in r["steps"] if s["kind"] == "think"][-1] for r in rows}
    assert "I want the" in answers["world_compare"] and "In 1" in answers["world_compare"]
    assert "I want the" not in answers["world_single"]


def test_the_binding_probe_gives_the_right_year_and_wants_the_name_stated_with_it():
    """`keyed_teacher.py`: a keyed answer that chose the wrong year is probed with the right one, in the
    whole episode, its final thought alone and its facts alone; the wanted name is the one stated with
    that year, and an answer without both facts is left out."""
    script = bench_script("keyed_teacher")
    thought = "<think> I want the later year. In 1985, Zeithla Systems was founded. In 1967, Groden Institute was founded. "
    wrong = thought + "The later of 1985 and 1967 is 1967, Groden Institute. So the answer is Groden Institute. </think>"
    row = {"entities": ["Zeithla Systems", "Groden Institute"],
           "segments": [{"role": "prompt", "text": "Q "}, {"role": "env", "text": "docs "}, {"role": "model", "text": wrong}]}
    unstated = {**row, "segments": [{"role": "model", "text": "<think> The later of 1985 and 1967 is 1985, Zeithla Systems. </think>"}]}
    (probe,) = script.binding_probes([row, unstated])
    cue = "The later of 1985 and 1967 is 1985,"
    assert probe["context"] == "Q docs " + thought + cue and probe["thought"] == thought + cue
    assert probe["drill"] == "In 1985, Zeithla Systems was founded. In 1967, Groden Institute was founded. " + cue
    assert probe["wanted"] == probe["first"] == "Zeithla Systems"


def test_keyed_drills_take_a_share_of_the_base_stream_and_leave_its_length(small_world):
    """`keyed_teacher.py --base-drill-share`: the base teacher trains on as many sequences as the
    shipped stream, that share of them keyed drills about names the world does not have."""
    import re

    from transformers import AutoTokenizer

    from dgpo_agent.store import read_corpus
    from dgpo_agent.training.pretrain import PretrainConfig
    from dgpo_agent.training.starting_point import ASSETS

    script = bench_script("keyed_teacher")
    tokenizer, corpus = AutoTokenizer.from_pretrained(ASSETS / "teacher"), list(read_corpus(small_world / "corpus.jsonl"))
    config = PretrainConfig(steps=4, batch_size=5, seq_len=64)
    shipped = script.base_sequences(tokenizer, corpus, config, 0.0)
    mixed = script.base_sequences(tokenizer, corpus, config, 0.4)
    drilled = [tokenizer.decode(s) for s in mixed if re.search(r"The (earlier|later) of \d{4} and \d{4} is \d{4},", tokenizer.decode(s))]
    assert len(shipped) == len(mixed) == 20 and len(drilled) == 8
    assert not {r["title"] for r in corpus} & set(re.findall(r"In \d{4}, (.+?) (?:was born|was founded|came out)", " ".join(drilled)))
