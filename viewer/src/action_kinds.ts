// The kinds of action (app.viewer.actions) by what their answer does, and how a message names them.
export const SUGGEST_KINDS = new Set(['point', 'box', 'undo', 'redo'])
// they end the suggestion's answer
export const EDIT_KINDS = new Set(['brush', 'erase', 'new_object', 'active', 'model', 'alternative'])
// the actions that move the label map's revision when applied (app.viewer.actions), and how a message names them
export const REVISION_KINDS = new Set(['point', 'box', 'brush', 'erase', 'undo', 'redo', 'alternative'])
export const SAID: Record<string, string> = {
  point: 'click', box: 'box', brush: 'brush stroke', erase: 'eraser stroke', undo: 'undo', redo: 'redo',
  new_object: 'New object', active: 'label choice', window: 'window change', view: 'slice change',
  model: 'model choice', alternative: 'choice of alternative',
}
