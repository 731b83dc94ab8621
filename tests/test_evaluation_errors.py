"""Every error path of the pixel-flipping metric: the message names the argument and echoes the value or shape."""

import sys

import numpy as np
import pytest
import torch

from crp.evaluation import (
    Constant,
    Inpainting,
    PixelFlipping,
    area_under_curve,
    get_perturbation,
    quadratic_per_step,
    region_counts,
    telea_inpaint,
)


class Linear(torch.nn.Module):
    def __init__(self, out_features: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(2 * 8 * 8, out_features)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x.flatten(1))


X = torch.randn(4, 2, 8, 8, generator=torch.Generator().manual_seed(0))
A = torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(1))


def run(inputs=X, attributions=A, targets=0, model=None, **settings):
    settings.setdefault("perturbation", "constant")
    return PixelFlipping(**settings)(model or Linear(), inputs, attributions, targets)


@pytest.mark.parametrize(
    "inputs,error,match",
    [
        (X.numpy(), TypeError, r"`inputs` must be a floating-point torch.Tensor of shape \(N, C, H, W\), got ndarray"),
        (X.long(), TypeError, r"`inputs` must be a floating-point torch.Tensor .* got torch.int64"),
        (X[0], ValueError, r"`inputs` must have shape \(N, C, H, W\) with N >= 1, got shape \(2, 8, 8\)"),
        (X[:0], ValueError, r"got shape \(0, 2, 8, 8\)"),
        (X.clone().index_put_((torch.tensor(0),), torch.tensor(float("nan"))), ValueError,
         r"`inputs` of shape \(4, 2, 8, 8\) contains NaN"),
    ],
)
def test_bad_inputs(inputs, error, match):
    with pytest.raises(error, match=match):
        run(inputs=inputs)


def test_attributions_that_do_not_match_the_inputs():
    with pytest.raises(ValueError, match=r"`attributions` of shape \(3, 8, 8\) does not match `inputs` of shape "
                                         r"\(4, 2, 8, 8\); expected \(4, 8, 8\), \(4, 1, 8, 8\) or \(4, 2, 8, 8\)"):
        run(attributions=A[:3])
    with pytest.raises(ValueError, match=r"`attributions` of shape \(4, 3, 8, 8\) does not match"):
        run(attributions=torch.zeros(4, 3, 8, 8))
    with pytest.raises(ValueError, match=r"`attributions` of shape \(4, 8, 4\) does not match"):
        run(attributions=A[..., :4])


def test_attributions_with_nan_or_of_a_wrong_type():
    bad = A.clone()
    bad[1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match=r"`attributions` of shape \(4, 8, 8\) contains NaN"):
        run(attributions=bad)
    with pytest.raises(TypeError, match=r"`attributions` must be a torch.Tensor or numpy array, got list"):
        run(attributions=A.tolist())


@pytest.mark.parametrize(
    "targets,match",
    [
        ([0, 1, 2], r"`targets` of shape \(3,\) does not match the 4 samples of `inputs`"),
        (torch.zeros(4, 1, dtype=torch.long), r"`targets` of shape \(4, 1\) does not match the 4 samples"),
        ([0.0, 1.0, 2.0, 0.0], r"`targets` must hold integer class indices, got dtype torch.float64"),
        ([0, 1, 3, 0], r"`targets` \[0, 1, 3, 0\] must lie in \[0, 3\) for a model with 3 outputs"),
        (-1, r"`targets` \[-1, -1, -1, -1\] must lie in \[0, 3\)"),
    ],
)
def test_bad_targets(targets, match):
    with pytest.raises(ValueError, match=match):
        run(targets=targets)


@pytest.mark.parametrize(
    "settings,error,match",
    [
        ({"perturbation": "blur"}, ValueError,
         r"`perturbation` must be one of \['constant', .*\] or a Perturbation instance, got 'blur'\."),
        ({"perturbation": 3}, TypeError, r"`perturbation` must be one of .* or a Perturbation instance, got 3\."),
        ({"order": "up"}, ValueError, r"`order` must be one of \['lrf', 'morf', 'random'\] or a callable, got 'up'"),
        ({"order": 3}, TypeError, r"`order` must be one of \['lrf', 'morf', 'random'\] or a callable, got 3"),
        ({"score": "accuracy"}, ValueError, r"`score` must be one of \['log_probability', .* got 'accuracy'"),
        ({"score": None}, TypeError, r"`score` must be one of .* or a callable, got None"),
        ({"region_size": 0}, ValueError, r"`region_size` must be an int >= 1, got 0"),
        ({"region_size": 1.5}, TypeError, r"`region_size` must be an int >= 1 or a pair \(height, width\) .* got 1.5"),
        ({"region_size": (2,)}, ValueError, r"`region_size` must be an int >= 1 or a pair \(height, width\)"),
        ({"region_size": "2"}, TypeError, r"`region_size` must be an int >= 1 or a pair .* got '2'"),
        ({"region_size": (2, 2.0)}, TypeError, r"`region_size` must be an int >= 1, got 2.0"),
        ({"steps": 0}, ValueError, r"`steps` must be an int >= 1, got 0"),
        ({"steps": -2}, ValueError, r"`steps` must be an int >= 1, got -2"),
        ({"steps": 2.5}, TypeError, r"`steps` must be an int >= 1, got 2.5"),
        ({"steps": True}, TypeError, r"`steps` must be an int >= 1, got True"),
        ({"steps": 4, "per_step": 2}, ValueError, r"give either `steps` \(4\) or `per_step` \(2\), not both"),
        ({"per_step": 0}, ValueError, r"`per_step` must be an int >= 1, got 0"),
        ({"per_step": [1, 0, 2]}, ValueError, r"`per_step` must be an int >= 1 or a non-empty 1-D sequence"),
        ({"per_step": []}, ValueError, r"`per_step` must be .* got \[\]"),
        ({"per_step": [[1, 2]]}, ValueError, r"`per_step` must be .* 1-D"),
        ({"per_step": 2.5}, TypeError, r"`per_step` must be an int >= 1 or a non-empty 1-D sequence .* got 2.5"),
        ({"per_step": "12"}, TypeError, r"`per_step` must be .* got '12'"),
        ({"batch_size": 0}, ValueError, r"`batch_size` must be an int >= 1, got 0"),
        ({"batch_size": 2.0}, TypeError, r"`batch_size` must be an int >= 1, got 2.0"),
        ({"seed": "a"}, TypeError, r"`seed` must be an int, got 'a'"),
    ],
)
def test_bad_settings(settings, error, match):
    with pytest.raises(error, match=match):
        PixelFlipping(**settings)


def test_region_size_that_does_not_tile_the_inputs():
    with pytest.raises(ValueError, match=r"`region_size` \(3, 3\) does not tile `inputs` of shape \(4, 2, 8, 8\)"):
        run(region_size=3)
    with pytest.raises(ValueError, match=r"`region_size` \(2, 16\) does not tile"):
        run(region_size=(2, 16))


def test_schedules_that_do_not_fit_the_regions():
    with pytest.raises(ValueError, match=r"`steps` 65 exceeds the 64 regions of one input; use at most 64"):
        run(steps=65)
    with pytest.raises(ValueError, match=r"`steps` 17 exceeds the 16 regions"):
        run(steps=17, region_size=2)
    with pytest.raises(ValueError, match=r"`per_step` perturbs 70 regions in all, more than the 64 regions"):
        run(per_step=[60, 10])
    with pytest.raises(ValueError, match=r"`steps` must be an int >= 1, got 0"):
        region_counts(10, steps=0)


def test_an_order_that_is_no_permutation():
    def repeat_first(scores, _generator):
        return torch.zeros_like(scores, dtype=torch.long)

    with pytest.raises(ValueError, match=r"`order` 'repeat_first' must return a permutation of the 64 regions"):
        run(order=repeat_first)


def test_a_score_of_the_wrong_shape():
    def whole_output(outputs, _targets):
        return outputs

    with pytest.raises(ValueError, match=r"`score` must return one value per input, shape \(\d+,\), got \(\d+, 3\)"):
        run(score=whole_output)


def test_named_score_needs_2d_outputs():
    class Spatial(torch.nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(ValueError, match=r"`score` 'logit' needs model outputs of shape \(B, K\), got \(4, 2, 8, 8\)"):
        run(model=Spatial().eval())


def test_perturbed_images_with_steps_out_of_range():
    metric = PixelFlipping(perturbation="constant", steps=4)
    with pytest.raises(ValueError, match=r"`steps` must be step indices in \[0, 4\], got \[0, 5\]"):
        metric.perturbed_images(X, A, [0, 5])
    with pytest.raises(ValueError, match=r"`steps` must be step indices in \[0, 4\], got \[0.5\]"):
        metric.perturbed_images(X, A, [0.5])


def test_auc_of_mismatched_curves():
    with pytest.raises(ValueError, match=r"`scores` of shape \(2, 3\) and `fractions` of shape \(4,\) do not match"):
        area_under_curve(np.zeros((2, 3)), np.linspace(0, 1, 4))
    with pytest.raises(ValueError, match=r"`scores` of shape \(1,\) and `fractions` of shape \(1,\) do not match"):
        area_under_curve(np.zeros(1), np.zeros(1))


def test_telea_without_opencv(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(ImportError, match=r"'telea' perturbation needs OpenCV: `pip install opencv-python-headless`"):
        telea_inpaint(X, torch.zeros(4, 1, 8, 8, dtype=torch.bool))
    with pytest.raises(ImportError, match="needs OpenCV"):
        run(perturbation=get_perturbation("telea"))


def test_bad_perturbation_and_schedule_helpers():
    with pytest.raises(ValueError, match=r"`iterations` must be an int >= 1, got 0"):
        Inpainting(iterations=0)
    with pytest.raises(TypeError, match=r"`iterations` must be an int >= 1, got 8.0"):
        Inpainting(iterations=8.0)
    with pytest.raises(ValueError, match=r"`n_regions` must be an int >= 1, got 0"):
        quadratic_per_step(0)
    with pytest.raises(TypeError, match=r"Constant.perturb needs the fill that prepare\(\) returned as `state`, got"):
        Constant().perturb(X, torch.zeros(4, 1, 8, 8, dtype=torch.bool), None)
    with pytest.raises(ValueError, match=r"`inputs` of shape \(4, 2, 8, 8\) contains NaN or infinite values"):
        run(inputs=X.clone().fill_(float("inf")))
