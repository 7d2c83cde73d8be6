// Loads a model folder with transformers.js and runs its image processor and its model on raw RGB
// images. Imported by transformers_js.mjs in Node and by transformers_js.html in Chromium, so that
// both runtimes take the same path through the library.

/**
 * job: {model, dtype, device, output, images: [{pixels, width, height}]}, where pixels is an
 * (height, width, 3) uint8 image as an array. Returns, per image, the processor's pixel_values and
 * the model's output named job.output, as {type, dims, data}.
 */
export async function runModel(transformers, job) {
  const { AutoImageProcessor, PreTrainedModel, RawImage } = transformers;
  const processor = await AutoImageProcessor.from_pretrained(job.model);
  // PreTrainedModel rather than AutoModel: config.json's model_type names our own network, which
  // transformers.js's registry does not hold; AutoModel would load the same class with a warning.
  const model = await PreTrainedModel.from_pretrained(job.model, { dtype: job.dtype, device: job.device });
  try {
    const results = [];
    for (const image of job.images) {
      const pixels = new RawImage(new Uint8ClampedArray(image.pixels), image.width, image.height, 3);
      const inputs = await processor(pixels);
      const outputs = await model(inputs);
      results.push({ pixel_values: plain(inputs.pixel_values), output: plain(outputs[job.output]) });
    }
    return results;
  } finally {
    await model.dispose();
  }
}

function plain(tensor) {
  return { type: tensor.type, dims: tensor.dims, data: Array.from(tensor.data) };
}
