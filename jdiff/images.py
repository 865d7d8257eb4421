"""Pictures a person looks at: PNG grids of uint8 images."""

import math

import numpy as np
from PIL import Image

from jdiff import files


def make_grid(images: np.ndarray, num_columns: int = 0, padding: int = 1, min_cell: int = 32) -> np.ndarray:
  """uint8 [N, H, W, C] -> one uint8 [rows*H', cols*W', C] image, small images upscaled (nearest)."""
  images = np.asarray(images)
  if images.ndim != 4 or images.dtype != np.uint8:
    raise ValueError(f"images must be uint8 [N, H, W, C], got {images.dtype} {images.shape}")
  count, height, width, channels = images.shape
  scale = max(1, math.ceil(min_cell / max(height, width)))
  images = images.repeat(scale, axis=1).repeat(scale, axis=2)
  height, width = height * scale, width * scale
  num_columns = num_columns or math.ceil(math.sqrt(count))
  num_rows = math.ceil(count / num_columns)
  grid = np.full((num_rows * (height + padding) + padding, num_columns * (width + padding) + padding,
                  channels), 255, np.uint8)
  for i, image in enumerate(images):
    row, col = divmod(i, num_columns)
    top, left = padding + row * (height + padding), padding + col * (width + padding)
    grid[top:top + height, left:left + width] = image
  return grid


def save_grid(images: np.ndarray, path: str, **kwargs) -> str:
  """make_grid(images) as a PNG at path (written to a temporary name, then renamed)."""
  grid = make_grid(images, **kwargs)
  picture = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
  files.write_with(path, lambda f: picture.save(f, format="PNG"))
  return path
