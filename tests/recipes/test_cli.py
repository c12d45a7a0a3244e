from recipes.cli import main


def test_help_lists_the_demo(capsys):
    assert main([]) == 0
    assert "demo" in capsys.readouterr().out


def test_demo_trains_and_prints_a_per_concept_table(capsys):
    assert main(["demo", "--epochs", "1", "--train-size", "128", "--test-size", "128"]) == 0
    out = capsys.readouterr().out
    for name in ("shadow", "occluder", "stripes", "tint", "clean", "all"):
        assert name in out
    assert "Test accuracy per planted concept" in out
