# The alseg custom-dataset layout (what `alseg demo-data` writes; point `data_root` at your own data):
#   <data_root>/img_dir/<id><img_suffix>   images
#   <data_root>/ann_dir/<id><seg_map_suffix>  label maps (class index per pixel, 255 = ignore)
#   <data_root>/splits/{pool,val,calib,all}.txt  id lists, one id per line
# The train split is the pool, val the validation split, and test every image (so `alseg infer` finds
# calibration ids there). `alseg train --labeled L` trains on the ids of L, which must be train-split ids.
_base_ = ['./runtime.py']

dataset_type = 'BaseSegDataset'
data_root = 'data/demo'
class_names = ('background', 'road', 'building', 'tree', 'car', 'van', 'sign')
palette = [[0, 0, 0], [128, 64, 128], [70, 70, 70], [107, 142, 35], [0, 0, 142], [0, 60, 100],
           [220, 220, 0]]
metainfo = dict(classes=class_names, palette=palette)
num_classes = len(class_names)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=False),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=False),
    dict(type='PackSegInputs'),
]
_dataset = dict(
    type=dataset_type,
    data_root=data_root,
    metainfo=metainfo,
    img_suffix='.png',
    seg_map_suffix='.png',
    reduce_zero_label=False,
    ignore_index=255,
    data_prefix=dict(img_path='img_dir', seg_map_path='ann_dir'),
)
train_dataloader = dict(
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(**_dataset, ann_file='splits/pool.txt', pipeline=train_pipeline),
)
val_dataloader = dict(
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(**_dataset, ann_file='splits/val.txt', pipeline=test_pipeline),
)
test_dataloader = dict(
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(**_dataset, ann_file='splits/all.txt', pipeline=test_pipeline),
)
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator
