# SegFormer with a MiT-b0 encoder and the all-MLP SegformerHead (logits at 1/4 of the input), for a GPU.
# Data: the alseg custom-folder layout (see _base_/alseg_demo_dataset.py); override `data_root`,
# `metainfo` and `model.decode_head.num_classes` for your data.
# Weights: `pretrained=None`, nothing is downloaded. To start from local ImageNet weights set
#   model.backbone.init_cfg=dict(type='Pretrained', checkpoint='/path/to/mit_b0.pth')
# or whole-model weights with `load_from = '/path/to/segformer_mit-b0.pth'`.
_base_ = ['./_base_/alseg_demo_dataset.py', './_base_/models/segformer_mit_b0.py',
          './_base_/schedules/adamw_20k.py']

model = dict(decode_head=dict(num_classes={{_base_.num_classes}}))

train_dataloader = dict(batch_size=8, num_workers=4, persistent_workers=True)
val_dataloader = dict(num_workers=2)
test_dataloader = val_dataloader
