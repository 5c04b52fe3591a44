"""The flags compress, sweep and study share are declared once (cramfast.cli.flags): the same
check refuses the same bad value in every program, in one line naming the flag."""
import pytest

from cramfast.cli import compress, flags
from cramfast.study import runner as study
from cramfast.sweep import runner as sweep

PROGRAMS = {"cramfast": lambda argv: compress.main(["compress", *argv]),
            "cramfast.sweep": sweep.main,
            "cramfast.study": lambda argv: study.main(["optimizer", "--file", "x", *argv])}


@pytest.mark.parametrize("prog", PROGRAMS)
@pytest.mark.parametrize("argv, says", [(["--max-steps", "-1"], "--max-steps: must be >= 0"),
                                        (["--dtype", "fp12"], "--dtype: invalid choice"),
                                        (["--threads", "0"], "--threads: must be >= 1")])
def test_a_shared_flag_is_checked_alike_everywhere(prog, argv, says, capsys):
    with pytest.raises(SystemExit) as exit_:
        PROGRAMS[prog](argv)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and "\n" not in err
    assert err.startswith(f"{prog}: error: {says}")


def test_setting_flags_name_the_flag_of_each_setting():
    parser = sweep._parser()
    assert flags.setting_flags(parser) == {"preset": "--preset", "max_steps": "--max-steps",
                                           "lr": "--lr", "patience": "--patience",
                                           "max_slots": "--max-slots",
                                           "checkpoint_seconds": "--checkpoint-every"}


def test_a_program_may_change_how_a_flag_is_collected_not_its_check():
    parser = sweep._parser()
    assert parser.parse_args(["--model", "a", "--model", "b"]).models == ["a", "b"]
    import argparse
    with pytest.raises(ValueError, match="only action, dest and help"):
        flags.add_flags(argparse.ArgumentParser(), "--max-steps", max_steps=dict(type=int))
