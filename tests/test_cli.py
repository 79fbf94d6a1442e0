"""One error path for every experiment: a user error is one line naming the flag or file,
a non-zero exit, and no output written; a bug keeps its traceback."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

from jaxpet import cli, files, runs
from jaxpet.errors import UserError

REPO = pathlib.Path(__file__).resolve().parent.parent
REAL_DATA = os.environ.get("JAXPET_DATA_DIR")



BAD = [  # (experiment, flags, what the one line must name)
    ("membership", ["--epochs=0"], "--epochs must be >= 1"),
    ("membership", ["--width_scale=nan"], "--width_scale must be a finite number"),
    ("membership", ["--dp_noise_multiplier=2"],
     "--dp_noise_multiplier=2.0 has no effect unless --defense is dpsgd"),
    ("membership", ["--defense=dpsgd", "--dp_delta=1"], "--dp_delta must be > 0 and < 1"),
    ("membership", ["--defense=dpsgd", "--norm=batch"], "--norm=group or none"),
    ("membership", ["--patience=3"],
     "--patience=3 has no effect unless --defense is dropout_early_stopping"),
    ("membership", ["--defense=dropout_early_stopping", "--val_size=0"], "needs --val_size > 0"),
    ("membership", ["--data_dir={tmp}/missing"], "does not exist"),
    ("membership", ["--workdir={tmp}/file"], "--workdir={tmp}/file is a file"),
    ("seed_tables", ["--max_seconds=-1"], "--max_seconds must be >= 0"),
    ("seed_tables", ["--cases=cifar10_p4_e50"], "--cases must be one of"),
    ("seed_tables", ["--train_size=1"], "--train_size must be >= 2"),
    ("dp_curve", ["--noise_multipliers=0.5,-1"], "--noise_multipliers must be > 0"),
    ("dp_curve", ["--noise_multipliers=0.5,x"],
     "--noise_multipliers must be a comma-separated list"),
    ("dp_curve", ["--dp_delta=inf"], "--dp_delta must be a finite number"),
    ("lira", ["--learning_rate=nan"], "--learning_rate must be a finite number"),
    ("lira", ["--num_models=7"], "--num_models must be even"),
    ("lira", ["--dp_clip_norm=2"], "--dp_clip_norm=2.0 has no effect"),
    ("lira", ["--rmia_offline_a=1.5"], "--rmia_offline_a must be >= 0 and <= 1"),
    ("lira", ["--num_targets=0"], "--num_targets must be >= 1"),
    ("lira", ["--dataset=mnist", "--augment_training"], "--augment_training flips images"),
    ("inversion", ["--step_size=-0.1"], "--step_size must be > 0"),
    ("inversion", ["--iterations=5,0"], "--iterations must be >= 1"),
    ("inversion", ["--val_per_person=10"], "--val_per_person must be >= 1 and <= 9"),
    ("inversion", ["--variants=paper_cost_blue"], "--variants must be one of"),
    ("inversion", ["--data_dir={tmp}/empty"], "att_faces: no local copy found"),
    ("attribute", ["--attribute=gender"], "both 'gender'"),
    ("attribute", ["--test_fraction=1"], "--test_fraction must be > 0 and < 1"),
    ("attribute", ["--image_size=4"], "--image_size must be >= 8"),
    ("attribute", ["--data_dir={tmp}/empty"], "utkface: no local copy found"),
    ("train_ensemble", ["--dropout=1.5"], "--dropout must be >= 0 and < 1"),
    ("train_ensemble", ["--learning_rate=inf"], "--learning_rate must be a finite number"),
    ("train_ensemble", ["--num_models=0"], "--num_models must be >= 1"),
    ("benchmark", ["--num_models=0"], "--num_models must be >= 1"),
    ("benchmark", ["--peak_flops=-5"], "--peak_flops must be > 0"),
    ("benchmark", ["--peak_flops=1e15", "--precisions=float32,bfloat16"], "a single --precisions"),
    ("benchmark", ["--workdir={tmp}/file"], "is a file, not a folder"),
    ("benchmark", ["--examples_per_model=32"], "smaller than one batch (--batch_size=128)"),
    ("benchmark", ["--workloads="], "--workloads, --num_models and --strategies each need"),
    ("benchmark", ["--inversion_classes=0", "--inversion_iterations=50"],
     "has no effect with --inversion_classes=0"),
    ("benchmark", ["--num_models=1,1"], "--num_models lists 1 more than once"),
    ("dp_curve", ["--noise_multipliers=1,1"], "--noise_multipliers lists 1.0 more than once"),
    ("membership", ["--workdir= "], "--workdir is empty"),
    ("membership", ["--dp_clip_norm=1.0"],
     "--dp_clip_norm=1.0 has no effect unless --defense is dpsgd"),
    ("seed_tables", ["--datasets="], "--datasets needs at least one"),
    ("seed_tables", ["--datasets=cifar10", "--cases=mnist_p10_e30"], "are not of --datasets"),
    ("lira", ["--num_models=4", "--max_reference_sweep=100"], "exceeds the 3 other models"),
    ("lira", ["--num_models=2"], "--num_models must be >= 4"),
    ("inversion", ["--notime_loop", "--speed_iterations=2"],
     "--speed_iterations=2 has no effect unless --time_loop is True"),
    ("attribute", ["--compare_layers=fc2"], "repeats --layer=fc2"),
    ("train_ensemble", ["--batch_size=1000", "--train_size=200"], "larger than --train_size=200"),
    ("audit", ["--num_references=3"], "--num_references must be even"),
    ("audit", ["--data={tmp}/missing.npz"], "--data={tmp}/missing.npz does not exist"),
    ("audit", ["--data={tmp}/file"], "is neither a jaxpet dataset"),
    ("audit", ["--target_members=m.npy"],
     "--target_members=m.npy has no effect unless --target is checkpoint"),
]


@pytest.mark.parametrize("name, setup, expected", [
    ("lira", "foreign", "holds the results of a membership run"),
    ("benchmark", "folder_output", "holds a folder benchmark.md where this run writes a file"),
    ("train_ensemble", "stages_file", "is a file where this run keeps its stages"),
])
def test_a_workdir_this_run_cannot_use_is_refused_before_work(tmp_path, main_error, name, setup,
                                                               expected):
    out = tmp_path / "out"
    out.mkdir()
    if setup == "foreign":
        files.write_json(out / "results.json", {"provenance": {"experiment": "membership"}})
    elif setup == "folder_output":
        (out / "benchmark.md").mkdir()
    else:
        (out / "stages").write_text("x")
    before = sorted(p.name for p in out.iterdir())
    message = main_error(name, [f"--workdir={out}"])
    assert message.startswith("error: ") and expected in message and "\n" not in message
    assert sorted(p.name for p in out.iterdir() if p.name != ".jaxpet.lock") == before


@pytest.mark.parametrize("name, argv, expected", BAD, ids=[f"{b[0]}:{' '.join(b[1])}" for b in BAD])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, monkeypatch, main_error, name, argv,
                                                 expected):
    monkeypatch.chdir(tmp_path)  # default workdirs (runs/...) land here, and must stay empty
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    argv = [a.format(tmp=tmp_path) for a in argv]
    if not any(a.startswith("--workdir") for a in argv):
        argv.append(f"--workdir={tmp_path}/out")
    message = main_error(name, argv)
    assert message.startswith("error: ") and "\n" not in message
    assert expected.format(tmp=tmp_path) in message
    outputs = [p for p in tmp_path.rglob("*")
               if p.is_file() and p.name not in (".jaxpet.lock", "file")]
    assert outputs == []


@pytest.mark.skipif(not REAL_DATA, reason="needs JAXPET_DATA_DIR with the real MNIST")
@pytest.mark.parametrize("name, argv, expected", [
    ("membership", ["--dataset=mnist", "--train_size=20000"],
     "--train_size=20000 is larger than a quarter"),
    ("membership", ["--dataset=mnist", "--val_size=15000"],
     "--val_size=15000 leaves no non-member"),
    ("lira", ["--dataset=mnist", "--pool_size=70000"],
     "--pool_size=70000 is larger than the train split"),
    ("train_ensemble", ["--train_size=60001"], "--train_size=60001 is larger than the train split"),
    ("membership", ["--dataset=mnist", "--batch_size=100000"],
     "--batch_size=100000 is larger than a model's 15000 members"),
    ("lira", ["--dataset=mnist", "--population_size=1000000"],
     "larger than the test split (10000)"),
    ("inversion", ["--figure_people=100"], "--figure_people=100 is more than the 40 people"),
])
def test_sizes_the_real_data_cannot_hold(tmp_path, main_error, name, argv, expected):
    message = main_error(name, [*argv, f"--data_dir={REAL_DATA}", f"--workdir={tmp_path}/out"])
    assert message.startswith("error: ") and expected in message and "\n" not in message
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and p.name != ".jaxpet.lock"]


def test_a_bug_keeps_its_traceback():
    def bug():
        return {}["missing"]

    with pytest.raises(KeyError):
        cli.guarded(bug)
    assert cli.is_user_error(UserError("x"))
    assert not cli.is_user_error(ValueError("raised outside jaxpet"))


def _script(name, *argv, cwd):
    return _scripts([name, *argv], cwd=cwd)[0]


def _scripts(*commands, cwd):
    """Runs experiments/<name>.py for each ``[name, *argv]`` of ``commands``, all at once (one
    process each: most of a run is single-threaded Python and XLA compilation, so two share a
    2-core machine); their CompletedProcess, in order."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = [subprocess.Popen([sys.executable, str(REPO / "experiments" / f"{name}.py"), *argv],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=cwd, env=env) for name, *argv in commands]
    try:
        outputs = [p.communicate(timeout=300) for p in started]
        return [subprocess.CompletedProcess(p.args, p.returncode, *out)
                for p, out in zip(started, outputs, strict=True)]
    finally:
        for p in started:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_the_real_main_exits_non_zero_with_one_line(tmp_path):
    out, unparsed = _scripts(["membership", "--epochs=-3", f"--workdir={tmp_path}/out"],
                             ["lira", "--epochs=ten"], cwd=tmp_path)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == "error: --epochs must be >= 1, got -3."
    assert "Traceback" not in out.stderr and not (tmp_path / "out").exists()
    # A flag value absl cannot parse is refused by absl, also without a traceback.
    assert unparsed.returncode != 0 and "Traceback" not in unparsed.stderr
    assert "--epochs" in unparsed.stderr


def test_a_second_writer_of_one_workdir_is_refused(tmp_path):
    """Two processes on one workdir: the second exits at once, naming the first."""
    with runs.Workdir(tmp_path / "busy"):
        out = _script("benchmark", f"--workdir={tmp_path}/busy", "--inversion_classes=0",
                      cwd=tmp_path)
    assert out.returncode == 1
    assert "is in use by another jaxpet run (pid" in out.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "busy" / "results.json").exists()


def test_a_bug_inside_jaxpet_is_not_taken_for_a_user_error():
    namespace = {}
    exec(compile("def unpack():\n    a, b = [1, 2, 3]\n", cli.__file__, "exec"), namespace)
    with pytest.raises(ValueError) as error:
        namespace["unpack"]()
    assert not cli.is_user_error(error.value)


@pytest.mark.skipif(not REAL_DATA, reason="needs JAXPET_DATA_DIR with the real MNIST")
def test_progress_is_logged_with_an_eta_and_quiet_silences_it(tmp_path):
    args = ("train_ensemble", "--dataset=mnist", "--role=shadow", "--num_models=1",
            "--train_size=256", "--epochs=2", "--batch_size=64")
    loud, quiet = _scripts([*args, f"--workdir={tmp_path}/loud", "--progress=log"],
                           [*args, f"--workdir={tmp_path}/quiet", "--quiet"], cwd=tmp_path)
    assert loud.returncode == 0, loud.stderr
    epochs = [line for line in loud.stderr.splitlines() if "epoch " in line]
    assert len(epochs) == 2 and all("images/s" in line and "ETA" in line for line in epochs)
    assert quiet.returncode == 0, quiet.stderr
    assert not re.search(r"^I\d{4} ", quiet.stderr, re.M) and "ETA" not in quiet.stderr
    assert "# " in quiet.stdout  # the summary is still printed
    assert (tmp_path / "quiet" / "report.html").exists()
