# A tiny UNet + FCN head for the 48x48 synthetic demo data (`alseg demo-data`); trains on CPU in about a
# minute. Pure PyTorch: no compiled mmcv op, no pretrained download.
_base_ = ['./_base_/alseg_demo_dataset.py']
custom_imports = dict(imports=['alseg.losses'], allow_failed_imports=False)

norm_cfg = dict(type='BN', requires_grad=True)  # SyncBN is not usable on CPU
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size_divisor=8,  # UNet with 4 stages downsamples 3 times
)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(
        type='UNet',
        in_channels=3,
        base_channels=8,
        num_stages=4,
        strides=(1, 1, 1, 1),
        enc_num_convs=(2, 2, 2, 2),
        dec_num_convs=(2, 2, 2),
        downsamples=(True, True, True),
        enc_dilations=(1, 1, 1, 1),
        dec_dilations=(1, 1, 1),
        with_cp=False,
        conv_cfg=None,
        norm_cfg=norm_cfg,
        act_cfg=dict(type='ReLU'),
        upsample_cfg=dict(type='InterpConv'),
        norm_eval=False,
        init_cfg=None,
    ),
    decode_head=dict(
        type='FCNHead',
        in_channels=8,
        in_index=3,  # the last decoder output, full resolution
        channels=32,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.0,  # Dropout2d over a handful of channels would drop whole classes' evidence
        num_classes={{_base_.num_classes}},
        norm_cfg=norm_cfg,
        align_corners=False,
        # Class-weighted CE (weights ~ sqrt(median pixel frequency / frequency), from the demo data's class
        # shares): stable across seeds, where plain or Dice-mixed CE sometimes merged car and van or predicted
        # background only. mmseg 1.2.2's CrossEntropyLoss(class_weight=...) fails on ignore pixels, hence
        # alseg's AlsegWeightedCELoss (alseg/losses.py).
        loss_decode=dict(type='AlsegWeightedCELoss', class_weight=[0.3, 0.4, 1.2, 1.0, 1.5, 1.6, 5.0]),
    ),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'),
)

train_dataloader = dict(batch_size=8)
# SGD as in mmseg's recipes: AdamW at 1e-2 often collapsed car and van into one class on this tiny net
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.05, momentum=0.9, weight_decay=5e-4))
param_scheduler = [dict(type='PolyLR', eta_min=1e-5, power=0.9, begin=0, end=300, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=300, val_interval=300)
