"""The one image reader (``timm_astro.data.images``): bit depths, files that are not images, links, special files,
decompression bombs; and that ``predict`` reads through it."""
import os

import numpy as np
import pytest
from PIL import Image

from timm_astro.data.images import UnreadableImage, check_folder_tree, image_problem, read_image
from timm_astro.errors import UserError

from image_files import RAMP_16, expected_8bit, fifo_unblocker, write_16bit_png, write_png_header, write_truncated_png

needs_fifo = pytest.mark.skipif(not hasattr(os, 'mkfifo'), reason='named pipes (os.mkfifo) are POSIX only')
needs_symlinks = pytest.mark.skipif(os.name == 'nt', reason='creating symbolic links needs privileges on Windows')


# ---- bit depths ---------------------------------------------------------------------------------------------

def test_16bit_greyscale_png_is_scaled_by_its_bit_depth_not_clipped(tmp_path):
    image = read_image(write_16bit_png(tmp_path / 'deep.png'))
    assert image.mode == 'RGB'
    pixels = np.asarray(image)
    for channel in range(3):
        np.testing.assert_array_equal(pixels[..., channel], expected_8bit(RAMP_16))
    assert np.asarray(read_image(tmp_path / 'deep.png', mode='L')).tolist() == expected_8bit(RAMP_16).tolist()


def test_32bit_integer_image_in_the_16bit_range_is_scaled_and_beyond_it_refused(tmp_path):
    Image.fromarray(RAMP_16.astype(np.int32)).save(tmp_path / 'int.tif')
    np.testing.assert_array_equal(np.asarray(read_image(tmp_path / 'int.tif', mode='L')), expected_8bit(RAMP_16))
    Image.fromarray(np.array([[0, 70000]], dtype=np.int32)).save(tmp_path / 'wide.tif')
    with pytest.raises(UnreadableImage, match='outside 0..65535'):
        read_image(tmp_path / 'wide.tif')


def test_float_image_is_refused_with_one_line_saying_it_needs_a_stretch(tmp_path):
    Image.fromarray(np.ones((4, 4), dtype=np.float32)).save(tmp_path / 'flux.tif')
    with pytest.raises(UserError, match='float pixels') as raised:
        read_image(tmp_path / 'flux.tif')
    assert 'stretch' in str(raised.value) and '\n' not in str(raised.value)


@pytest.mark.parametrize('mode', ['L', 'RGB', 'RGBA', 'P', '1'])
def test_8bit_modes_convert_as_pillow_converts_them(tmp_path, mode):
    source = Image.fromarray(np.random.default_rng(0).integers(0, 255, (6, 5, 3), dtype=np.uint8)).convert(mode)
    source.save(tmp_path / 'x.png')
    assert np.array_equal(np.asarray(read_image(tmp_path / 'x.png')), np.asarray(source.convert('RGB')))


# ---- files that are not images --------------------------------------------------------------------------------

def test_a_jpeg_named_png_is_read_and_a_text_file_named_png_is_not(tmp_path):
    source = Image.fromarray(np.full((8, 8, 3), 90, dtype=np.uint8))
    source.save(tmp_path / 'jpeg.png', format='JPEG')
    assert read_image(tmp_path / 'jpeg.png').size == (8, 8)
    (tmp_path / 'text.png').write_text('not an image')
    with pytest.raises(UnreadableImage, match='not an image Pillow can identify'):
        read_image(tmp_path / 'text.png')
    with pytest.raises(UnreadableImage, match='truncated'):
        read_image(write_truncated_png(tmp_path / 'cut.png'))


@pytest.mark.parametrize('width, height', [(10_000, 10_000), (20_000, 20_000)])  # Pillow's warning, then its error
def test_decompression_bomb_is_refused_before_decoding(tmp_path, width, height):
    path = write_png_header(tmp_path / 'bomb.png', width, height)
    with pytest.raises(UnreadableImage, match='decompression bomb') as raised:
        read_image(path)
    assert f'{width * height:,} pixels' in str(raised.value)


# ---- links and special files ----------------------------------------------------------------------------------

@needs_symlinks
def test_links_are_followed_to_regular_files_only(tmp_path):
    inside, outside = tmp_path / 'data', tmp_path / 'elsewhere'
    inside.mkdir()
    outside.mkdir()
    Image.new('RGB', (3, 3), 'red').save(inside / 'real.png')
    Image.new('RGB', (3, 3), 'blue').save(outside / 'far.png')
    (inside / 'near.png').symlink_to(inside / 'real.png')
    (inside / 'far.png').symlink_to(outside / 'far.png')
    (inside / 'dangling.png').symlink_to(inside / 'gone.png')
    (inside / 'self.png').symlink_to(inside / 'self.png')
    (inside / 'folder.png').symlink_to(outside, target_is_directory=True)
    assert read_image(inside / 'near.png').getpixel((0, 0)) == (255, 0, 0)
    assert read_image(inside / 'far.png').getpixel((0, 0)) == (0, 0, 255)
    assert image_problem(inside / 'dangling.png') == 'a symbolic link to a missing file'
    assert image_problem(inside / 'self.png') == 'a symbolic link loop'
    assert image_problem(inside / 'folder.png') == 'a folder, not an image file'
    assert image_problem(inside / 'absent.png') == 'not found'
    with pytest.raises(UnreadableImage, match='dangling.png: cannot be read as an image: a symbolic link to a missing'):
        read_image(inside / 'dangling.png')


@needs_fifo
def test_fifo_is_reported_and_never_opened(tmp_path):
    fifo = tmp_path / 'pipe.png'
    os.mkfifo(fifo)
    with fifo_unblocker(fifo):
        assert image_problem(fifo) == 'a named pipe (FIFO), not a regular file: not opened'
        with pytest.raises(UnreadableImage, match='named pipe'):
            read_image(fifo)


@pytest.mark.skipif(not os.path.exists('/dev/zero'), reason='needs a character device (/dev/zero)')
@needs_symlinks
def test_link_to_a_device_is_reported_and_never_opened(tmp_path):
    (tmp_path / 'zero.png').symlink_to('/dev/zero')
    assert image_problem(tmp_path / 'zero.png') == 'a device, not a regular file: not opened'


@needs_symlinks
def test_folder_loops_and_folders_reached_twice_are_refused(tmp_path):
    root = tmp_path / 'data'
    (root / 'a').mkdir(parents=True)
    Image.new('RGB', (3, 3)).save(root / 'a' / 'x.png')
    check_folder_tree(root)
    (root / 'b').symlink_to(root / 'a', target_is_directory=True)
    with pytest.raises(UserError, match='reached twice'):
        check_folder_tree(root)
    (root / 'b').unlink()
    (root / 'a' / 'up').symlink_to(root, target_is_directory=True)
    with pytest.raises(UserError, match='a/up: .*loop'):
        check_folder_tree(root)


# ---- predict reads through the same reader ------------------------------------------------------------------

def test_predict_reads_a_16bit_png_as_evaluate_does(tmp_path):
    from timm_astro.evaluation.predict import open_prediction_inputs
    folder = tmp_path / 'images'
    folder.mkdir()
    write_16bit_png(folder / 'deep.png')
    (folder / 'text.png').write_text('not an image')
    inputs = open_prediction_inputs(folder)
    assert inputs.ids == ['deep.png', 'text.png']
    image, _, error = inputs[0]
    assert error == '' and np.array_equal(np.asarray(image)[..., 1], expected_8bit(RAMP_16))
    image, _, error = inputs[1]
    assert image is None and 'not an image Pillow can identify' in error
