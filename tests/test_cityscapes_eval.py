"""Tests for the Cityscapes car AP with the official evaluator (32x64 images).

Expected AP values follow the official evaluator's integration: for one
class, precision p_i and recall r_i at the distinct scores (ascending), plus
the artificial point (p = 1, r = 0), AP = sum_i p_i * (r_{i-1} - r_{i+1}) / 2
(r_{-1} = r_0, r_{n+1} = 0). With every prediction a true positive (p = 1)
this telescopes to the largest recall: 1.0 when all cars are found, 0.5 when
half are. A match needs IoU > threshold, strictly.
"""
import numpy as np
from PIL import Image
import pytest

from datasets.cityscapes_cars import cityscapes_cars_dataset_builder as builder
from eval import cityscapes_eval as ce

H, W = 32, 64
ROAD, SKY, CAR = 0, 10, 13
CAR_CLASSES = (13, 19)  # Two car classes, K = 20.
K = 20


def _scene():
  """Road below sky, an ignore strip, two 12x12 cars and a car group."""
  train_ids = np.full((H, W), ROAD, np.uint8)
  train_ids[:8] = SKY
  train_ids[:, 60:] = 255
  car_instances = np.zeros((H, W), np.int32)
  car_instances[10:22, 4:16] = 1
  car_instances[10:22, 30:42] = 2
  train_ids[car_instances > 0] = CAR
  train_ids[24:30, 48:56] = CAR  # Car pixels without an instance: a group.
  return train_ids, car_instances


def _box(rows, cols):
  mask = np.zeros((H, W), bool)
  mask[rows, cols] = True
  return mask


def _ap(tmp_path, images, **kwargs):
  """images: list of (train_ids, car_instances, [(mask, score), ...])."""
  for i, (train_ids, car_instances, predictions) in enumerate(images):
    key = f'ulm_{i:06d}_000019'
    ce.write_ground_truth(tmp_path / 'gt', key, 'ulm', train_ids, car_instances)
    ce.write_prediction(tmp_path / 'pred', key, 'ulm', predictions)
  return ce.evaluate_ap(tmp_path / 'gt', tmp_path / 'pred', **kwargs)


def test_written_ground_truth_decodes_to_the_stored_features(tmp_path):
  train_ids, car_instances = _scene()
  path = ce.write_ground_truth(tmp_path, 'ulm_000000_000019', 'ulm',
                               train_ids, car_instances)
  assert path == tmp_path / 'ulm' / 'ulm_000000_000019_gtFine_instanceIds.png'
  instance_ids = np.asarray(Image.open(path)).astype(np.int64)
  label_ids = np.where(instance_ids >= 1000, instance_ids // 1000,
                       instance_ids)
  # The builder's own conversions give back what it stored.
  np.testing.assert_array_equal(builder.train_ids(label_ids), train_ids)
  np.testing.assert_array_equal(builder.car_instances(instance_ids),
                                car_instances)
  assert set(np.unique(instance_ids)) == {0, 7, 23, 26, 26001, 26002}
  assert np.all(instance_ids[:, 60:] == ce.VOID_LABEL_ID)
  assert np.all(instance_ids[24:30, 48:56] == 26)  # Group, not an instance.


def test_perfect_prediction_scores_one(tmp_path):
  train_ids, car_instances = _scene()
  perfect = [(car_instances == 1, 0.9), (car_instances == 2, 0.7)]
  result = _ap(tmp_path, [(train_ids, car_instances, perfect),
                          (train_ids, car_instances, perfect[::-1])])
  assert result['ap50'] == pytest.approx(1.0, abs=1e-12)
  assert result['ap'] == pytest.approx(1.0, abs=1e-12)


def test_missing_half_the_cars_halves_ap(tmp_path):
  train_ids, car_instances = _scene()
  result = _ap(tmp_path, [(train_ids, car_instances,
                           [(car_instances == 1, 0.9)])])
  assert result == {'ap': 0.5, 'ap50': 0.5}


def test_iou_0_6_counts_at_ap50_only(tmp_path):
  train_ids = np.full((H, W), ROAD, np.uint8)
  car_instances = np.zeros((H, W), np.int32)
  car_instances[5:15, 10:25] = 1  # 150 pixels.
  train_ids[car_instances > 0] = CAR
  partial = _box(slice(5, 15), slice(10, 19))  # 90 pixels inside: IoU 0.6.
  result = _ap(tmp_path, [(train_ids, car_instances, [(partial, 0.8)])])
  # Matched at overlaps 0.50 and 0.55 (AP 1), missed at 0.60 .. 0.95 (AP 0).
  assert result['ap50'] == 1.0
  assert result['ap'] == pytest.approx(0.2, abs=1e-12)


def test_false_positive_counts_except_on_void_and_groups(tmp_path):
  train_ids, car_instances = _scene()
  perfect = [(car_instances == 1, 0.5), (car_instances == 2, 0.5)]
  on_road = _box(slice(24, 30), slice(20, 28))
  on_void = _box(slice(10, 20), slice(60, 64))
  on_group = _box(slice(24, 30), slice(48, 56))
  results = []
  for i, extra in enumerate((on_road, on_void, on_group)):
    results.append(_ap(tmp_path / str(i), [
        (train_ids, car_instances, perfect + [(extra, 0.9)])]))
  # A confident false positive on road: precisions (2/3, 0) at recalls
  # (1, 0), then (1, 0): AP = 2/3 * (1 - 0) / 2 + 0 * (1 - 0) / 2 = 1/3.
  assert results[0]['ap'] == pytest.approx(1 / 3, abs=1e-12)
  # On void or on a car group it is excused.
  assert results[1] == {'ap': 1.0, 'ap50': 1.0}
  assert results[2] == {'ap': 1.0, 'ap50': 1.0}


def test_all_predictions_excused_gives_zero_not_a_crash(tmp_path):
  # Upstream issue #89: the evaluator's IndexError; the AP is 0.
  train_ids, car_instances = _scene()
  on_void = _box(slice(10, 20), slice(60, 64))
  result = _ap(tmp_path, [(train_ids, car_instances, [(on_void, 0.9)])])
  assert result == {'ap': 0.0, 'ap50': 0.0}


def test_small_cars_are_ignored_below_min_region_size(tmp_path):
  train_ids, car_instances = _scene()
  car_instances[2:7, 50:55] = 3  # 25 pixels, not predicted.
  train_ids[car_instances == 3] = CAR
  found = [(car_instances == 1, 0.9), (car_instances == 2, 0.8)]
  images = [(train_ids, car_instances, found)]
  assert _ap(tmp_path / 'a', images)['ap'] == pytest.approx(1.0, abs=1e-12)
  small = _ap(tmp_path / 'b', images, min_region_size=25)
  assert small['ap'] == pytest.approx(2 / 3, abs=1e-12)


def test_no_ground_truth_cars_gives_nan_and_no_predictions_zero(tmp_path):
  train_ids = np.full((H, W), ROAD, np.uint8)
  no_cars = np.zeros((H, W), np.int32)
  result = _ap(tmp_path / 'a', [(train_ids, no_cars,
                                 [(_box(slice(0, 12), slice(0, 12)), 0.9)])])
  assert np.isnan(result['ap']) and np.isnan(result['ap50'])
  scene = _scene()
  assert _ap(tmp_path / 'b', [scene + ([],)]) == {'ap': 0.0, 'ap50': 0.0}


def test_evaluation_writes_nothing_and_ignores_environment(tmp_path,
                                                           monkeypatch):
  cwd = tmp_path / 'cwd'
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  monkeypatch.setenv('CITYSCAPES_DATASET', str(tmp_path / 'nowhere'))
  monkeypatch.setenv('CITYSCAPES_RESULTS', str(tmp_path / 'nowhere'))
  train_ids, car_instances = _scene()
  data = tmp_path / 'data'
  _ap(data, [(train_ids, car_instances, [(car_instances == 1, 0.9)])])
  before = sorted(p.relative_to(data) for p in data.rglob('*'))
  _ap_again = ce.evaluate_ap(data / 'gt', data / 'pred')
  assert _ap_again == {'ap': 0.5, 'ap50': 0.5}
  assert not list(cwd.iterdir())
  assert sorted(p.relative_to(data) for p in data.rglob('*')) == before
  assert not (tmp_path / 'nowhere').exists()


def test_object_score_and_car_decision_hand_case():
  clusters = np.array([[0, 1, 1, 2],
                       [0, 1, 1, 2]])
  probs = np.zeros((2, 2, 4, K), np.float32)
  # Cluster 1, sample 0: class 13 at 0.6 (and class 19 at 0.1) everywhere.
  probs[0, :, 1:3, 13], probs[0, :, 1:3, 19], probs[0, :, 1:3, ROAD] = (
      0.6, 0.1, 0.3)
  # Sample 1: class 19 at 0.5 on the left column, road wins on the right.
  probs[1, :, 1, 19], probs[1, :, 1, ROAD] = 0.5, 0.5 - 0.01
  probs[1, :, 1, 13] = 0.01
  probs[1, :, 2, ROAD], probs[1, :, 2, 19] = 0.7, 0.3
  # Cluster 2: road everywhere, some car probability.
  probs[:, :, 3, ROAD], probs[:, :, 3, 13] = 0.8, 0.2
  probs[:, :, 0, SKY] = 1.0
  predictions = ce.car_instance_predictions(clusters, probs, CAR_CLASSES)
  # Cluster 1 votes: 13 x4 (sample 0), 19 x2 + road x2 (sample 1): car 6 > 2.
  assert len(predictions) == 1
  mask, score = predictions[0]
  np.testing.assert_array_equal(mask, clusters == 1)
  # Car probability per pixel and sample: 0.7 (sample 0); 0.51, 0.3 (sample 1).
  assert score == pytest.approx((0.7 * 4 + 0.51 * 2 + 0.3 * 2) / 8)


def test_car_votes_pool_the_car_classes_and_ties_go_against_cars():
  clusters = np.ones((1, 4), np.int64)
  # Road 2 votes, 13 one vote, 19 one vote: pooled car (2) ties road (2).
  labels = np.array([[[0, 0, 13, 19]]])
  votes = ce.car_predictions_from_votes(clusters, labels, np.ones((1, 4)),
                                        CAR_CLASSES, K)
  assert votes == []
  labels = np.array([[[0, 13, 13, 19]]])  # Car 3 > road 1, though 13 < 3.
  (mask, score), = ce.car_predictions_from_votes(
      clusters, labels, np.full((1, 4), 0.25), CAR_CLASSES, K)
  assert mask.all() and score == pytest.approx(0.25)


def test_cityscapes_ap_end_to_end_cleans_up(tmp_path):
  train_ids, car_instances = _scene()
  probs = np.zeros((3, H, W, K), np.float32)
  probs[..., ROAD] = 1.0
  clusters = car_instances.copy()
  for car, car_class, confidence in ((1, 13, 0.9), (2, 19, 0.8)):
    probs[:, car_instances == car] = 0.0
    probs[:, car_instances == car, car_class] = confidence
    probs[:, car_instances == car, ROAD] = 1 - confidence
  clusters[:, 60:] = 7  # A road cluster in the ignore strip: not a car.
  accumulator = ce.CityscapesAP(CAR_CLASSES, work_dir=tmp_path)
  directory = accumulator.directory
  assert accumulator.add(b'ulm_000000_000019', 'ulm', train_ids,
                         car_instances, clusters, probs) == 2
  assert accumulator.add('ulm_000001_000019', 'ulm', train_ids,
                         car_instances, clusters, probs) == 2
  with pytest.raises(ValueError, match='exists'):
    accumulator.add('ulm_000001_000019', 'ulm', train_ids, car_instances,
                    clusters, probs)
  # A bad prediction is refused before anything of its image is written.
  with pytest.raises(ValueError, match='shape'):
    accumulator.add_predictions('ulm_000002_000019', 'ulm', train_ids,
                                car_instances, [(np.ones((H, 8), bool), 0.5)])
  # Summaries reduced elsewhere: the same predictions as from the softmax.
  summaries = ce.car_predictions_from_votes(
      clusters, probs.argmax(-1), probs[..., list(CAR_CLASSES)].sum(-1).mean(0),
      CAR_CLASSES, K)
  accumulator.add_predictions('ulm_000002_000019', 'ulm', train_ids,
                              car_instances, summaries)
  assert accumulator.num_images == 3
  assert accumulator.result() == {'ap': 1.0, 'ap50': 1.0}
  assert not directory.exists()
  with pytest.raises(ValueError, match='closed'):
    accumulator.result()


def test_bad_inputs_raise_clear_errors(tmp_path):
  train_ids, car_instances = _scene()
  bad = train_ids.copy()
  bad[car_instances == 1] = ROAD
  with pytest.raises(ValueError, match='not 13'):
    ce.ground_truth_instance_ids(bad, car_instances)
  bad = train_ids.copy()
  bad[0, 0] = 19
  with pytest.raises(ValueError, match='0..18 or 255'):
    ce.ground_truth_instance_ids(bad, car_instances)
  with pytest.raises(ValueError, match='spaces'):
    ce.write_ground_truth(tmp_path, 'ulm 1', 'ulm', train_ids, car_instances)
  with pytest.raises(ValueError, match='do not match'):
    ce.car_instance_predictions(car_instances, np.ones((2, H, W - 1, K)),
                                CAR_CLASSES)
  with pytest.raises(ValueError, match='car_classes'):
    ce.car_instance_predictions(car_instances, np.ones((2, H, W, K)), (13, 20))
  with pytest.raises(ValueError, match='no \\*_gtFine'):
    ce.evaluate_ap(tmp_path / 'none', tmp_path / 'none')
  ce.write_ground_truth(tmp_path / 'gt', 'ulm_0_1', 'ulm', train_ids,
                        car_instances)
  with pytest.raises(ValueError, match='without prediction'):
    ce.evaluate_ap(tmp_path / 'gt', tmp_path / 'pred')
  ce.write_prediction(tmp_path / 'pred', 'ulm_0_1', 'ulm', [])
  with pytest.raises(ValueError, match='include 0.5'):
    ce.evaluate_ap(tmp_path / 'gt', tmp_path / 'pred', overlaps=(0.6, 0.7))
  # The evaluator's own refusals (print + sys.exit) become errors.
  txt = tmp_path / 'pred' / 'ulm' / 'ulm_0_1.txt'
  txt.write_text('../../x.png 26 0.5\n')
  with pytest.raises(ValueError, match='refused.*outside of prediction path'):
    ce.evaluate_ap(tmp_path / 'gt', tmp_path / 'pred')
