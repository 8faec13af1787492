"""The runtime imports and runs inference where torch cannot be imported."""

from __future__ import annotations


def test_inference_without_torch(model_factory, tmp_path, run_without_torch):
    model = model_factory(input_size=(16, 16), crop="circle", tta="d4")
    script = f"""
        import numpy as np
        import edgereg
        from edgereg.cli.main import main
        p = edgereg.Predictor({str(model)!r})
        r = p.predict([np.full((20, 20, 3), 128, np.uint8)])
        assert r.values.shape == (1, 1) and r.spread is not None
        assert main(["info", {str(model)!r}]) == 0
        assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules), "torch imported"
        print("OK")
    """
    result = run_without_torch(script)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "OK" in result.stdout
