# DeepLabV3 with a dilated ResNet-18 (output stride 8) and an ASPP head, for a GPU.
# Data: the alseg custom-folder layout (see _base_/alseg_demo_dataset.py); override `data_root`,
# `class_names`/`metainfo`, `num_classes` for your data, e.g. with
#   alseg train configs/deeplabv3_r18_d8.py --data-root /data/mine --cfg-options model.decode_head.num_classes=19 ...
# Weights: `pretrained=None`, nothing is downloaded. To start from local ImageNet weights set
#   model.backbone.init_cfg=dict(type='Pretrained', checkpoint='/path/to/resnet18_v1c.pth')
# or whole-model weights with `load_from = '/path/to/deeplabv3_r18-d8.pth'` (loaded with torch's safe
# weights_only=True by alseg when it reads them itself).
# Multi-GPU: switch norm_cfg to SyncBN (needs CUDA).
_base_ = ['./_base_/alseg_demo_dataset.py']

norm_cfg = dict(type='BN', requires_grad=True)
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size_divisor=8,
)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(
        type='ResNetV1c',
        depth=18,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        dilations=(1, 1, 2, 4),
        strides=(1, 2, 1, 1),
        norm_cfg=norm_cfg,
        norm_eval=False,
        style='pytorch',
        contract_dilation=True,
        init_cfg=None,
    ),
    decode_head=dict(
        type='ASPPHead',
        in_channels=512,
        in_index=3,
        channels=128,
        dilations=(1, 12, 24, 36),
        dropout_ratio=0.1,
        num_classes={{_base_.num_classes}},
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0, avg_non_ignore=True),
    ),
    auxiliary_head=dict(
        type='FCNHead',
        in_channels=256,
        in_index=2,
        channels=64,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes={{_base_.num_classes}},
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4, avg_non_ignore=True),
    ),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'),
)

train_dataloader = dict(batch_size=8, num_workers=4, persistent_workers=True)
val_dataloader = dict(num_workers=2)
test_dataloader = val_dataloader
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=5e-4),
                     clip_grad=None)
param_scheduler = [dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=20000, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=20000, val_interval=2000)
