import { describe, expect, it } from 'vitest';
import { dragWindow, orientationMarkers, PRESETS, windowParam, zoomAbout } from '../src/lib/windowing';

describe('window/level', () => {
  it('drags right to widen and down to raise the level, within what the server accepts', () => {
    expect(dragWindow(PRESETS.lung, 50, -25)).toEqual({ width: 1700, level: -700 });
    expect(dragWindow(PRESETS.mediastinal, -1000, 0).width).toBe(1);
    expect(dragWindow(PRESETS.lung, 0, 10_000).level).toBe(4000);
  });

  it('names a preset, else sends W,L', () => {
    expect(windowParam(PRESETS.lung)).toBe('lung');
    expect(windowParam(PRESETS.mediastinal)).toBe('mediastinal');
    expect(windowParam({ width: 1700, level: -700 })).toBe('1700,-700');
  });
});

describe('zoom and pan', () => {
  it('keeps the point under the pointer and never zooms out past fit', () => {
    const z = zoomAbout({ zoom: 1, x: 0, y: 0 }, 2, 100, 50);
    expect(z).toEqual({ zoom: 2, x: -100, y: -50 });
    expect(zoomAbout(z, 0.25)).toEqual({ zoom: 1, x: 0, y: 0 });
    expect(zoomAbout({ zoom: 8, x: 0, y: 0 }, 2).zoom).toBe(8);
  });
});

describe('orientation markers', () => {
  it('shows the patient direction of each edge, filling the opposite of a named one', () => {
    expect(orientationMarkers({ left: 'R', right: 'L', top: 'A', bottom: 'P' })).toEqual({ left: 'R', right: 'L', top: 'A', bottom: 'P' });
    expect(orientationMarkers({ left: 'R', top: 'A' })).toEqual({ left: 'R', right: 'L', top: 'A', bottom: 'P' });
    expect(orientationMarkers(null)).toBeNull();
  });
});
