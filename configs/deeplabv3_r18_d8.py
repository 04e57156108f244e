# DeepLabV3 with a dilated ResNet-18 (output stride 8) and an ASPP head, for a GPU.
# Data: the alseg custom-folder layout (see _base_/alseg_demo_dataset.py); override `data_root`,
# `class_names`/`metainfo`, `num_classes` for your data, e.g. with
#   alseg train configs/deeplabv3_r18_d8.py --data-root /data/mine --cfg-options model.decode_head.num_classes=19 ...
# Weights: `pretrained=None`, nothing is downloaded. To start from local ImageNet weights set
#   model.backbone.init_cfg=dict(type='Pretrained', checkpoint='/path/to/resnet18_v1c.pth')
# or whole-model weights with `load_from = '/path/to/deeplabv3_r18-d8.pth'` (loaded with torch's safe
# weights_only=True by alseg when it reads them itself).
# Multi-GPU: switch norm_cfg to SyncBN (needs CUDA).
_base_ = ['./_base_/alseg_demo_dataset.py', './_base_/models/deeplabv3_r18_d8.py',
          './_base_/schedules/sgd_20k.py']

model = dict(decode_head=dict(num_classes={{_base_.num_classes}}), auxiliary_head=dict(num_classes={{_base_.num_classes}}))

train_dataloader = dict(batch_size=8, num_workers=4, persistent_workers=True)
val_dataloader = dict(num_workers=2)
test_dataloader = val_dataloader
