// A small line graph on a canvas: the last N readings of one number, drawn without a library.

const POINTS = 60;

export class Graph {
  readonly canvas: HTMLCanvasElement;
  private values: number[] = [];

  constructor(
    private title: string,
    private format: (value: number) => string,
  ) {
    this.canvas = document.createElement("canvas");
    this.canvas.width = 420;
    this.canvas.height = 140;
    this.canvas.setAttribute("data-testid", `graph-${title.split(" ")[0].toLowerCase()}`);
    this.draw();
  }

  add(value: number) {
    this.values.push(value);
    if (this.values.length > POINTS) this.values.shift();
    this.canvas.dataset.samples = String(this.values.length);
    this.draw();
  }

  private draw() {
    const g = this.canvas.getContext("2d");
    if (!g) return;
    const { width, height } = this.canvas;
    g.clearRect(0, 0, width, height);
    g.fillStyle = "#f6f8fa";
    g.fillRect(0, 0, width, height);
    const top = Math.max(1, ...this.values) * 1.2;
    g.strokeStyle = "#0969da";
    g.lineWidth = 2;
    g.beginPath();
    this.values.forEach((value, i) => {
      const x = (i / (POINTS - 1)) * width;
      const y = height - 20 - (value / top) * (height - 30);
      if (i === 0) g.moveTo(x, y);
      else g.lineTo(x, y);
    });
    g.stroke();
    g.fillStyle = "#24292f";
    g.font = "12px sans-serif";
    const last = this.values.length ? this.format(this.values[this.values.length - 1]) : "–";
    g.fillText(`${this.title}: ${last}`, 8, height - 6);
  }
}
