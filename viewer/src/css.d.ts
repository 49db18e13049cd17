// vite bundles the stylesheet imported by main.ts; the type checker only needs to know the import is a module.
declare module '*.css'
