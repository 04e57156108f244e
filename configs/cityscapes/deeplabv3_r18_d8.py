# Cityscapes (19 classes), DeepLabV3 with a dilated ResNet-18: mmseg's own Cityscapes dataset config, for a GPU.
# Data: mmseg's layout under data_root (leftImg8bit/{train,val}/<city>/*_leftImg8bit.png,
# gtFine/{train,val}/<city>/*_gtFine_labelTrainIds.png, made by mmseg's tools/dataset_converters/cityscapes.py).
#   alseg ids cityscapes/deeplabv3_r18_d8 --data-root data/cityscapes --out pool.txt
# Crops of 512x1024 as in mmseg's recipes; inference on the whole 1024x2048 image (logits at 1/8: 128x256).
# No weights are downloaded: set model.backbone.init_cfg=dict(type='Pretrained', checkpoint='/path/resnet18_v1c.pth')
# to start from local ImageNet weights.
_base_ = [
    'mmseg::_base_/datasets/cityscapes.py',
    '../_base_/runtime.py',
    '../_base_/schedules/sgd_20k.py',
    '../_base_/models/deeplabv3_r18_d8.py',
]
crop_size = (512, 1024)
model = dict(data_preprocessor=dict(size=crop_size), decode_head=dict(num_classes=19),
             auxiliary_head=dict(num_classes=19))
train_dataloader = dict(batch_size=8, num_workers=4)
