"""nnU-Net into smp3d: ResEnc / PlainConv U-Nets of dynamic-network-architectures (the oracle) load
strictly into smp3d.NNUNet and give equal outputs, deep-supervision outputs included; results folders
(plans.json + dataset.json + fold checkpoint) load; what cannot be read is refused clearly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet

import smp3d
from smp3d.nnunet import load_nnunet_encoder_weights, nnunet_key_map, read_nnunet_plan


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


FEATURES = (4, 8, 16, 16)
# Per spatial_dims: isotropic, and anisotropic as nnU-Net plans thick slices (kernel 1 and stride 1 on one axis).
TOPOLOGIES = {
    (2, "iso"): ((3, 3, 3, 3), (1, 2, 2, 2), (16, 16)),
    (2, "aniso"): (((1, 3), (1, 3), 3, 3), (1, (2, 1), 2, 2), (8, 16)),
    (3, "iso"): ((3, 3, 3, 3), (1, 2, 2, 2), (16, 8, 8)),
    (3, "aniso"): (((3, 3, 1), (3, 3, 1), 3, 3), (1, (2, 2, 1), 2, (2, 2, 1)), (16, 16, 4)),
}


def _layers(spatial_dims):
    conv_op = {2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]
    norm_op = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[spatial_dims]
    # nnU-Net's plans: conv biases, affine InstanceNorm(eps 1e-5), LeakyReLU, no dropout.
    return dict(
        conv_op=conv_op,
        norm_op=norm_op,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
        conv_bias=True,
    )


def nnunet_network(kind, spatial_dims, topology, deep_supervision=True, classes=3, in_channels=2, **overrides):
    kernels, strides, _ = TOPOLOGIES[(spatial_dims, topology)]
    common = dict(
        input_channels=in_channels,
        n_stages=len(FEATURES),
        features_per_stage=FEATURES,
        kernel_sizes=kernels,
        strides=strides,
        num_classes=classes,
        deep_supervision=deep_supervision,
        **{**_layers(spatial_dims), **overrides},
    )
    torch.manual_seed(0)
    if kind == "resenc":
        network = ResidualEncoderUNet(n_blocks_per_stage=(1, 2, 2, 1), n_conv_per_stage_decoder=1, **common)
    else:
        network = PlainConvUNet(n_conv_per_stage=2, n_conv_per_stage_decoder=2, **common)
    # Look trained: random weights everywhere (nnU-Net zero-initialises the last norm of each block).
    with torch.no_grad():
        for p in network.parameters():
            p.normal_(0, 0.3)
    return network


def _input(spatial_dims, topology, batch=2, in_channels=2):
    torch.manual_seed(1)
    return torch.randn(batch, in_channels, *TOPOLOGIES[(spatial_dims, topology)][2])


CASES = [(k, d, t, True) for k in ("resenc", "plain") for d in (2, 3) for t in ("iso", "aniso")]
CASES += [("resenc", 3, "aniso", False), ("plain", 2, "aniso", False)]


@pytest.mark.parametrize(
    "kind,spatial_dims,topology,deep_supervision", CASES, ids=lambda v: {True: "ds", False: "no-ds"}.get(v, str(v))
)
def test_network_loads_strictly_and_outputs_match(kind, spatial_dims, topology, deep_supervision):
    network = nnunet_network(kind, spatial_dims, topology, deep_supervision)
    model = smp3d.from_nnunet(network)
    assert isinstance(model, smp3d.NNUNet)
    assert model.encoder.out_channels == (2, *FEATURES)
    expected_encoder = "resenc_m" if kind == "resenc" else "plain_nnunet"
    assert model.name == f"nnunet-{expected_encoder}"
    # Every tensor of nnU-Net's (aliases aside) has a place, and nothing of ours is left unset.
    mapping = nnunet_key_map(network.state_dict(), kind, deep_supervision)
    assert set(v for v in mapping.values() if v is not None) == set(model.state_dict())
    x = _input(spatial_dims, topology)
    network.train(), model.train()
    with torch.no_grad():
        expected, got = network(x), model(x)
    if deep_supervision:
        # nnU-Net's list: full resolution first, every decoder level.
        assert isinstance(got, list) and len(got) == len(expected) == len(FEATURES) - 1
        for a, b, reduction in zip(expected, got, model.deep_supervision_reductions, strict=True):
            assert tuple(b.shape[2:]) == tuple(s // r for s, r in zip(x.shape[2:], reduction, strict=True))
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    else:
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    network.eval(), model.eval()
    with torch.no_grad():
        expected, got = network(x), model(x)
    torch.testing.assert_close(got, expected[0] if deep_supervision else expected, rtol=1e-5, atol=1e-5)


def test_decoder_levels_follow_the_agreed_interface():
    model = smp3d.from_nnunet(nnunet_network("resenc", 3, "aniso"))
    decoder = model.decoder
    assert decoder.level_channels == (4, 8, 16)
    assert decoder.level_reductions == ((1, 1, 1), (2, 2, 1), (4, 4, 2))
    x = _input(3, "aniso")
    with torch.no_grad():
        features = model.encoder(x)
        levels = decoder.forward_levels(features)
        torch.testing.assert_close(levels[0], decoder(features))
    assert [t.shape[1] for t in levels] == list(decoder.level_channels)
    assert len(model.deep_supervision_heads) == 2


# -- results folders ------------------------------------------------------------------------------------------


def _plans(kind, spatial_dims, topology, configuration):
    """plans.json as nnU-Net >= 2.4 writes it (the fields from_nnunet reads, plus the usual neighbours)."""
    kernels, strides, patch = TOPOLOGIES[(spatial_dims, topology)]

    def per_axis(v):
        return [v] * spatial_dims if isinstance(v, int) else list(v)

    dims = {2: "2d", 3: "3d"}[spatial_dims]
    arch_kwargs = {
        "n_stages": len(FEATURES),
        "features_per_stage": list(FEATURES),
        "conv_op": f"torch.nn.modules.conv.Conv{dims}",
        "kernel_sizes": [per_axis(k) for k in kernels],
        "strides": [per_axis(s) for s in strides],
        "n_conv_per_stage_decoder": [1] * 3 if kind == "resenc" else [2] * 3,
        "conv_bias": True,
        "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dims}",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }
    if kind == "resenc":
        arch_kwargs["n_blocks_per_stage"] = [1, 2, 2, 1]
        network_class = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
        plans_name = "nnUNetResEncUNetLPlans"
    else:
        arch_kwargs["n_conv_per_stage"] = [2, 2, 2, 2]
        network_class = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
        plans_name = "nnUNetPlans"
    return {
        "dataset_name": "Dataset999_Tiny",
        "plans_name": plans_name,
        "original_median_spacing_after_transp": [1.0] * spatial_dims,
        "original_median_shape_after_transp": list(patch),
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": list(range(spatial_dims)),
        "transpose_backward": list(range(spatial_dims)),
        "configurations": {
            configuration: {
                "data_identifier": f"nnUNetPlans_{configuration}",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": list(patch),
                "median_image_size_in_voxels": list(patch),
                "spacing": [1.0] * spatial_dims,
                "normalization_schemes": ["ZScoreNormalization", "ZScoreNormalization"],
                "use_mask_for_norm": [False, False],
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "architecture": {
                    "network_class_name": network_class,
                    "arch_kwargs": arch_kwargs,
                    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
                },
                "batch_dice": True,
            },
            "3d_cascade_fullres": {"inherits_from": configuration, "previous_stage": "3d_lowres"},
        },
        "experiment_planner_used": "nnUNetPlannerResEncL" if kind == "resenc" else "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {},
    }


DATASET = {
    "channel_names": {"0": "T1", "1": "T2"},
    "labels": {"background": 0, "liver": 1, "tumour": 2, "ignore": 3},
    "numTraining": 4,
    "file_ending": ".nii.gz",
}


def _results_folder(tmp_path, kind, spatial_dims, topology, network, extra=None):
    configuration = {2: "2d", 3: "3d_fullres"}[spatial_dims]
    plans = _plans(kind, spatial_dims, topology, configuration)
    folder = tmp_path / f"nnUNetTrainer__{plans['plans_name']}__{configuration}"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(DATASET))
    checkpoint = {
        "network_weights": network.state_dict(),
        "optimizer_state": {"state": {}, "param_groups": [{"lr": 0.01}]},
        "logging": {"train_losses": [np.float64(0.5), np.float64(0.25)], "epoch_end_timestamps": [1.0, 2.0]},
        "_best_ema": np.float32(0.8),
        "current_epoch": 2,
        "trainer_name": "nnUNetTrainer",
        "inference_allowed_mirroring_axes": (0, 1),
        **(extra or {}),
    }
    torch.save(checkpoint, folder / "fold_0" / "checkpoint_final.pth")
    return folder


@pytest.mark.parametrize(
    "kind,spatial_dims,topology", [("resenc", 3, "aniso"), ("plain", 2, "iso")], ids=["resenc-3d", "plain-2d"]
)
def test_results_folder_builds_the_plan_and_loads_the_fold(tmp_path, kind, spatial_dims, topology):
    network = nnunet_network(kind, spatial_dims, topology, deep_supervision=False)
    folder = _results_folder(tmp_path, kind, spatial_dims, topology, network)
    model = smp3d.from_nnunet(folder, fold=0)
    assert model.name == ("nnunet-resenc_l" if kind == "resenc" else "nnunet-plain_nnunet")  # nnUNetResEncUNetLPlans
    x = _input(spatial_dims, topology)
    network.eval(), model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), network(x), rtol=1e-5, atol=1e-5)
    # The cascade configuration inherits the architecture.
    assert read_nnunet_plan(folder / "plans.json", DATASET, "3d_cascade_fullres")["strides"] == model.encoder.strides


class Opaque:
    """An object torch.load(weights_only=True) must not unpickle (nnU-Net's init_args hold such things)."""


def test_results_folder_refusals(tmp_path):
    network = nnunet_network("resenc", 3, "iso", deep_supervision=False)
    folder = _results_folder(tmp_path, "resenc", 3, "iso", network, extra={"init_args": Opaque()})
    with pytest.raises(ValueError, match="weights_only=True"):
        smp3d.from_nnunet(folder)
    with pytest.raises(FileNotFoundError, match="fold_3"):
        smp3d.from_nnunet(folder, fold=3)
    with pytest.raises(ValueError, match="no configuration '2d'"):
        smp3d.from_nnunet(folder, configuration="2d")
    old = {"configurations": {"3d_fullres": {"UNet_class_name": "PlainConvUNet", "pool_op_kernel_sizes": []}}}
    with pytest.raises(ValueError, match="before 2.4"):
        read_nnunet_plan(old, DATASET, "3d_fullres")
    with pytest.raises(ValueError, match="no 'labels'"):
        read_nnunet_plan(_plans("resenc", 3, "iso", "3d_fullres"), {"channel_names": {"0": "CT"}}, "3d_fullres")


def test_network_refusals():
    with pytest.raises(TypeError, match="ResidualEncoderUNet or PlainConvUNet"):
        smp3d.from_nnunet(nn.Conv3d(1, 1, 1))
    batch_norm = nnunet_network("plain", 2, "iso", norm_op=nn.BatchNorm2d)
    with pytest.raises(ValueError, match="affine InstanceNorm"):
        smp3d.from_nnunet(batch_norm)
    state = dict(nnunet_network("plain", 2, "iso").state_dict())
    state["decoder.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"decoder\.extra\.weight"):
        nnunet_key_map(state, "plain")


# -- the encoders themselves ----------------------------------------------------------------------------------


def test_resenc_defaults_are_nnunets():
    with torch.device("meta"):
        enc3 = smp3d.get_encoder("resenc_l", in_channels=1, depth=6)
        enc2 = smp3d.get_encoder("resenc_l", in_channels=1, depth=8, spatial_dims=2)
    assert enc3.out_channels == (1, 32, 64, 128, 256, 320, 320)
    assert enc2.out_channels == (1, 32, 64, 128, 256, 512, 512, 512, 512)
    assert [len(stage) for stage in enc3.stages] == [1, 3, 4, 6, 6, 6]
    assert enc3.reductions[1] == (1, 1, 1) and enc3.reductions[-1] == (32, 32, 32)
    assert not hasattr(enc3.stages[0][0].shortcut, "conv")  # same width, no stride: identity shortcut
    assert isinstance(enc3.stages[1][0].shortcut.pool, nn.AvgPool3d)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"depth": 9}, r"in 1\.\.8"),
        ({"depth": 3, "features": (8, 16)}, "features must be"),
        ({"depth": 3, "blocks": (1, 0, 2)}, "blocks must be"),
        ({"depth": 2, "kernel_sizes": ((1, 2, 3), 3)}, "odd positive"),
        ({"depth": 2, "kernel_sizes": (3, 3, 3)}, "kernel_sizes must be an int or 2 items"),
    ],
)
def test_resenc_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        smp3d.get_encoder("resenc_m", **kwargs)


def test_nnunet_with_an_encoder_whose_first_feature_is_reduced():
    """With a first stage that strides, the head upsamples the decoder's finest level to the input size."""
    model = smp3d.NNUNet(
        "plain",
        encoder_depth=3,
        base_channels=4,
        strides=((2, 2, 1), 2, 2),
        in_channels=1,
        classes=2,
        deep_supervision=True,
    )
    x = torch.randn(2, 1, 16, 16, 8)
    masks = model.train()(x)
    assert [tuple(m.shape) for m in masks] == [(2, 2, 16, 16, 8), (2, 2, 4, 4, 4)]
    assert model.deep_supervision_reductions == ((1, 1, 1), (4, 4, 2))
    sum(m.square().mean() for m in masks).backward()
    assert model.eval()(x).shape == (2, 2, 16, 16, 8)


def test_encoder_weights_of_a_checkpoint_initialise_a_resenc_encoder(tmp_path):
    """The nnssl / OpenMind path: only the encoder of a ResEnc checkpoint, into a registry-built encoder."""
    network = nnunet_network("resenc", 3, "iso", deep_supervision=False)
    path = tmp_path / "checkpoint_final.pth"
    torch.save({"network_weights": network.state_dict(), "current_epoch": 1000}, path)
    kernels, strides, _ = TOPOLOGIES[(3, "iso")]
    encoder = smp3d.get_encoder(
        "resenc_l", in_channels=2, depth=4, strides=strides, features=FEATURES, blocks=(1, 2, 2, 1)
    )
    load_nnunet_encoder_weights(encoder, path)
    x = _input(3, "iso")
    network.eval(), encoder.eval()
    with torch.no_grad():
        for ours, theirs in zip(encoder(x)[1:], network.encoder(x), strict=True):
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    wrong = smp3d.get_encoder("resenc_l", in_channels=2, depth=4, strides=strides, features=FEATURES)
    with pytest.raises(ValueError, match="do not fit this encoder"):
        load_nnunet_encoder_weights(wrong, path)


def test_converted_model_round_trips_through_save_pretrained(tmp_path):
    model = smp3d.from_nnunet(nnunet_network("resenc", 3, "aniso"))
    model.save_pretrained(tmp_path / "model")
    loaded = smp3d.from_pretrained(tmp_path / "model")
    assert isinstance(loaded, smp3d.NNUNet) and loaded.deep_supervision
    assert loaded.encoder.kernel_sizes == model.encoder.kernel_sizes and loaded.encoder.strides == model.encoder.strides
    x = _input(3, "aniso")
    with torch.no_grad():
        for a, b in zip(model.train()(x), loaded.train()(x), strict=True):
            torch.testing.assert_close(b, a)


def test_compiles_without_graph_breaks():
    import architecture_checks as checks

    model = smp3d.NNUNet("plain_nnunet", encoder_depth=3, in_channels=1, classes=2, base_channels=4)
    checks.check_compiles(model, torch.randn(1, 1, 16, 16, 16))
