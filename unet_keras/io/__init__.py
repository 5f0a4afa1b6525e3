"""The data stage: reading images, masks and stacks, mask classes, normalisation, synthetic
data, and writing files atomically.

No TensorFlow here (NumPy, Pillow, tifffile, SciPy), and nothing imported by this file, so
`unet_keras.io.atomic` stays cheap for the client.
"""
